"""The single-graph prototype: one ONNX graph whose group is chosen by runtime inputs equals each group's graph."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from ditq.errors import DitqError
from ditq.export.single_graph import save_single_graph, single_graph
from ditq.runtime.backends import ort_session


def _inputs(batch: int = 4) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"hidden_states": rng.standard_normal((batch, 1, 8, 8), dtype=np.float32),
            "timestep": np.full((batch,), 500.0, np.float32), "class_labels": np.arange(batch) % 11}


def test_single_graph_equals_every_group_graph(tiny_onnx, tmp_path):
    sg = single_graph(tiny_onnx)
    assert len(sg.feeds) == len(tiny_onnx.groups) > 1 and sg.ratios and sg.varying
    # the weights are stored once: every INT8 weight initializer stays a constant
    consts = {t.name for t in sg.model.graph.initializer}
    assert any(n.endswith(".weight_int8") for n in consts) and not consts & set(sg.feeds[0])
    path = tmp_path / "single.onnx"
    save_single_graph(sg, path)
    one = ort_session(path, 1, fuse=False)
    x = _inputs()
    outs = []
    for g, group in enumerate(tiny_onnx.groups):
        want = ort_session(tiny_onnx.path(group.group_id), 1, fuse=False).run(None, x)[0]
        got = one.run(None, {**x, **sg.feeds[g]})[0]
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(np.abs(want).max()))
        outs.append(got)
    assert any(not np.allclose(outs[0], o) for o in outs[1:])  # the feeds do select different groups


def test_weights_that_differ_per_group_are_refused(tiny_onnx, tmp_path, monkeypatch):
    real_load = onnx.load

    def load(path, *a, **k):
        model = real_load(path, *a, **k)
        if path.endswith("group_1.onnx"):
            w = next(t for t in model.graph.initializer if t.name.endswith(".weight_int8"))
            arr = onnx.numpy_helper.to_array(w).copy()
            arr.flat[0] = -arr.flat[0] if arr.flat[0] else 1
            w.CopyFrom(onnx.numpy_helper.from_array(arr, w.name))
        return model

    monkeypatch.setattr(onnx, "load", load)
    with pytest.raises(DitqError, match=r"weight_int8 \(a weight, weight scale or zero point\) differs"):
        single_graph(tiny_onnx)
