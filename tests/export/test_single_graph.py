"""The single-graph prototype: one ONNX graph whose group is chosen by runtime inputs equals each group's graph."""

from __future__ import annotations

import shutil

import numpy as np
import onnx
import pytest

from ditq.artifacts.onnx_data import tensor_value
from ditq.artifacts.single_graph import load_feeds
from ditq.core.metrics import sqnr_db_np
from ditq.errors import DitqError
from ditq.export.single_graph import save_single_graph, single_graph
from ditq.runtime.backends import ort_session


def _inputs(batch: int = 4) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"hidden_states": rng.standard_normal((batch, 1, 8, 8), dtype=np.float32),
            "timestep": np.full((batch,), 500.0, np.float32), "class_labels": np.arange(batch) % 11}


def test_single_graph_equals_every_group_graph(tiny_onnx, tmp_path):
    shutil.copytree(tiny_onnx.root, tmp_path / "onnx")
    sg = single_graph(tiny_onnx)
    assert len(sg.feeds) == len(tiny_onnx.groups) > 1 and sg.ratios and sg.varying
    # the weights are stored once: every INT8 weight initializer stays a constant
    consts = {t.name for t in sg.model.graph.initializer}
    assert any(n.endswith(".weight_int8") for n in consts) and not consts & set(sg.feeds[0])
    path = tmp_path / "onnx" / "single.onnx"  # beside the set's weights.bin, which it references
    save_single_graph(sg, path)
    assert path.stat().st_size < tiny_onnx.path(0).stat().st_size * 2  # no weights of its own
    assert [set(f) for f in load_feeds(path, len(sg.feeds))] == [set(f) for f in sg.feeds]
    one = ort_session(path, 1, fuse=False)
    x = _inputs()
    outs = []
    for g, group in enumerate(tiny_onnx.groups):
        want = ort_session(tiny_onnx.path(group.group_id), 1, fuse=False).run(None, x)[0]
        got = one.run(None, {**x, **load_feeds(path, len(sg.feeds))[g]})[0]
        # the group's scale ratio applied around a shared scale rounds differently now and then (a value crosses
        # a rounding boundary: one quantization step), so elementwise at most a few elements, and by SQNR
        close = np.isclose(got, want, rtol=1e-4, atol=1e-4 * float(np.abs(want).max()))
        ref = want.astype(np.float64).ravel()
        assert close.mean() > 0.98 and sqnr_db_np(got.astype(np.float64).ravel() - ref, ref) > 60
        outs.append(got)
    assert any(not np.allclose(outs[0], o) for o in outs[1:])  # the feeds do select different groups


def test_weights_that_differ_per_group_are_refused(tiny_onnx, tmp_path, monkeypatch):
    real_load = onnx.load

    def load(path, *a, **k):
        model = real_load(path, *a, **k)
        if path.endswith("group_1.onnx"):
            w = next(t for t in model.graph.initializer if t.name.endswith(".weight_int8"))
            arr = tensor_value(w, tiny_onnx.root).copy()  # onnx refuses a hard-linked file
            arr.flat[0] = -arr.flat[0] if arr.flat[0] else 1
            w.CopyFrom(onnx.numpy_helper.from_array(arr, w.name))
        return model

    monkeypatch.setattr(onnx, "load", load)
    with pytest.raises(DitqError, match=r"weight_int8 \(a weight, weight scale or zero point\) differs"):
        single_graph(tiny_onnx)


def test_export_single_graph_option_and_onnxruntime_uses_it(tiny_model, tiny_recipe, tiny_recipe_dir, tiny_onnx,
                                                            tmp_path, feeds, capsys):
    from ditq.artifacts.onnx import OnnxArtifact
    from ditq.cli.main import main
    from ditq.core.metrics import sqnr_db
    from ditq.runtime.backends import onnxruntime_backend

    out = tmp_path / "onnx"
    assert main(["-q", "export", str(tiny_recipe_dir), "-o", str(out), "--single-graph"]) == 0
    assert "single graph: single_graph.onnx" in capsys.readouterr().out
    art = OnnxArtifact.load(out)
    assert art.single_graph and (out / art.single_graph["file"]).is_file()
    assert [g.file for g in art.groups] == [g.file for g in tiny_onnx.groups]  # the group graphs are still there
    one, per_group = onnxruntime_backend(art, fuse=False), onnxruntime_backend(tiny_onnx, fuse=False)
    assert one.name.endswith("-single") and not per_group.name.endswith("-single")
    lo_hi = art.intervals
    for x, t, y in feeds([(lo + hi) / 2 for lo, hi in lo_hi]):
        # the same Q/DQ arithmetic, but the group's scale ratio applied around a shared scale rounds differently:
        # now and then a value crosses a rounding boundary (one quantization step), so compare by SQNR
        want = per_group(x, t, y)
        assert sqnr_db(one(x, t, y), want) > 60
    assert one.calls == [1] * len(lo_hi)
    # the feeds are part of the set: a changed file is caught like any other
    (out / art.single_graph["feeds"]).write_bytes(b"x")
    with pytest.raises(DitqError, match="single_graph_feeds.safetensors"):
        OnnxArtifact.load(out)
