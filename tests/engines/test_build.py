"""``ditq build`` / ``build_engines`` without a GPU: refusals, and the orchestration against a fake TensorRT."""

from __future__ import annotations

import json
import shlex
import shutil

import pytest

from ditq.artifacts import manifest_sha256
from ditq.artifacts.onnx import OnnxArtifact
from ditq.cli.main import main
from ditq.engines import BuildConfig, EngineArtifact, build_engines
from ditq.errors import DitqError


def _one_line_error(capsys, code, expected_code=1):
    err = capsys.readouterr().err.strip()
    assert code == expected_code
    assert len(err.splitlines()) == 1 and "error" in err, err
    return err


def _copy_onnx(tiny_onnx, tmp_path, **recipe):
    """A copy of the tiny ONNX set, with ``recipe`` fields changed in its manifest."""
    root = tmp_path / "onnx"
    shutil.copytree(tiny_onnx.root, root)
    body = json.loads((root / "manifest.json").read_text())
    body["recipe"].update(recipe)
    (root / "manifest.json").write_text(json.dumps(body))
    return OnnxArtifact.load(root)


def test_build_without_tensorrt_is_one_line_and_leaves_nothing(capsys, tiny_onnx, tmp_path, no_tensorrt):
    out = tmp_path / "engines"
    code = main(["-q", "build", str(tiny_onnx.root), "-o", str(out)])
    err = _one_line_error(capsys, code)
    assert "tensorrt is needed" in err and "pip install 'ditq[trt]'" in err
    assert not out.exists() and not list(tmp_path.glob(".engines*"))


def test_bad_batch_range_is_a_usage_error(capsys, tiny_onnx, tmp_path):
    code = main(["build", str(tiny_onnx.root), "-o", str(tmp_path / "e"), "--min-batch", "8", "--max-batch", "4"])
    assert "--max-batch" in _one_line_error(capsys, code, expected_code=2)  # checked right after parsing
    with pytest.raises(DitqError, match="opt-level"):
        BuildConfig(opt_level=7)


@pytest.mark.parametrize("fields", [
    {"float_quantized_activations": True},  # Q-DiT: per token and channel group, float ops
    {"float_quantized_activations": None},  # a dynamic set exported before per-token Q/DQ (no such field)
])
def test_float_quantized_activations_are_refused(capsys, tiny_onnx, tmp_path, fake_trt, fields):
    art = _copy_onnx(tiny_onnx, tmp_path, method="qdit", dynamic_activations=True, **fields)
    if fields["float_quantized_activations"] is None:
        body = json.loads((art.root / "manifest.json").read_text())
        del body["recipe"]["float_quantized_activations"]
        (art.root / "manifest.json").write_text(json.dumps(body))
    code = main(["build", str(art.root), "-o", str(tmp_path / "engines")])
    err = _one_line_error(capsys, code)
    assert "dynamically" in err and "static" in err and "qdit" in err
    assert not (tmp_path / "engines").exists()


def test_quantized_set_without_qdq_is_refused(tiny_onnx, tmp_path, fake_trt):
    art = _copy_onnx(tiny_onnx, tmp_path)
    shutil.copy(art.root / "reference.onnx", art.root / "group_1.onnx")  # an unquantized graph in a W8A8 set
    with pytest.raises(DitqError, match="group_1.onnx has no QuantizeLinear"):
        build_engines(OnnxArtifact.load(art.root, verify=False), tmp_path / "engines", progress=False)
    assert not (tmp_path / "engines").exists()


def test_build_writes_plans_shared_timing_cache_and_manifest(tiny_onnx, tmp_path, fake_trt):
    out = tmp_path / "engines"
    config = BuildConfig(min_batch=2, opt_batch=4, max_batch=16, workspace_gib=0.5, opt_level=2)
    art = build_engines(tiny_onnx, out, config, progress=False)

    assert [g.file for g in art.groups] == [f"group_{g.group_id}.plan" for g in tiny_onnx.groups]
    assert art.intervals == tiny_onnx.intervals and art.trt_version == "10.13.0.35"
    assert art.device == "Fake GPU / sm_90" and art.batch_range == (2, 16)
    assert art.parent_sha256 == manifest_sha256(tiny_onnx.root)
    assert [g.onnx_sha256 for g in art.groups] == [g.sha256 for g in tiny_onnx.groups]
    sample = tiny_onnx.model["sample_shape"]
    assert art.profile["hidden_states"] == {"min": [2, *sample], "opt": [4, *sample], "max": [16, *sample]}
    assert art.profile["timestep"] == art.profile["class_labels"] == {"min": [2], "opt": [4], "max": [16]}
    # one strongly typed network per group (explicit flag on 10.x), each with the profile, limits and level
    assert (out / "group_0.plan").read_bytes().startswith(b"PLAN group_0 flags=2 ")
    assert len(fake_trt.configs) == len(tiny_onnx.groups)
    for cfg in fake_trt.configs:
        assert cfg.pools == {"workspace": 1 << 29} and cfg.builder_optimization_level == 2
        assert cfg.profiles[0].shapes["hidden_states"] == ([2, *sample], [4, *sample], [16, *sample])
    # ONE timing cache: created once, set on every group's config, saved with every group's entries
    assert fake_trt.caches_created == [b""]
    assert len({id(cfg.cache) for cfg in fake_trt.configs}) == 1
    assert (out / "timing.cache").read_bytes() == "\n".join(f"group_{g.group_id}" for g in tiny_onnx.groups).encode()
    body = json.loads((out / "manifest.json").read_text())
    assert body["kind"] == "ditq.engines" and body["gpu"] == {"name": "Fake GPU", "compute_capability": "sm_90"}
    assert body["builder"]["strongly_typed"] and body["builder"]["optimization_level"] == 2
    assert body["onnx"]["sha256"] == body["parent_sha256"] and "dir" not in body["recipe"]
    cmd = shlex.split(art.groups[0].polygraphy)
    assert cmd[:3] == ["polygraphy", "convert", f"{art.onnx_dir}/group_0.onnx"] and "--strongly-typed" in cmd
    assert f"hidden_states:[2,{','.join(map(str, sample))}]" in cmd and "workspace:536870912" in cmd
    assert (out / art.groups[0].onnx_file).resolve() == tiny_onnx.path(0).resolve()


def test_timing_cache_file_is_loaded_and_updated(tiny_onnx, tmp_path, fake_trt):
    cache = tmp_path / "shared" / "timing.cache"
    build_engines(tiny_onnx, tmp_path / "a", BuildConfig(timing_cache=cache), progress=False)
    first = cache.read_bytes()
    assert first and fake_trt.caches_created == [b""]
    build_engines(tiny_onnx, tmp_path / "b", BuildConfig(timing_cache=cache), progress=False)
    assert fake_trt.caches_created == [b"", first]  # the second set starts from the first one's timings


def test_network_flags_follow_the_tensorrt_major(tiny_onnx, tmp_path, fake_trt):
    fake_trt.__version__ = "11.0.0.10"  # strongly typed is the default on 11.x; the flag may be gone
    del fake_trt.NetworkDefinitionCreationFlag
    art = build_engines(tiny_onnx, tmp_path / "e", progress=False)
    assert (art.root / "group_0.plan").read_bytes().startswith(b"PLAN group_0 flags=0 ")
    assert art.builder["network_flags"] == 0 and art.trt_version == "11.0.0.10"


def test_parser_errors_are_listed_by_node_in_one_line(capsys, tiny_onnx, tmp_path, fake_trt):
    fake_trt.fail_parse = {"group_1"}
    code = main(["-q", "build", str(tiny_onnx.root), "-o", str(tmp_path / "engines")])
    err = _one_line_error(capsys, code)
    assert "group_1.onnx (2 error(s))" in err
    assert "/blocks.0/MatMul: Assertion failed: scale must be > 0" in err and "graph: 1 node(s)" in err
    assert not (tmp_path / "engines").exists() and not list(tmp_path.glob(".engines*"))


def test_build_failure_names_the_tensorrt_error_and_keeps_the_old_set(tiny_onnx, tmp_path, fake_trt):
    out = tmp_path / "engines"
    build_engines(tiny_onnx, out, progress=False)
    before = (out / "manifest.json").read_text()
    fake_trt.fail_build = {"group_2"}
    with pytest.raises(DitqError, match="failed to build group_2.onnx: out of memory"):
        build_engines(tiny_onnx, out, BuildConfig(force=True), progress=False)
    assert (out / "manifest.json").read_text() == before  # --force replaces only on success
    assert EngineArtifact.load(out).groups


def test_build_report_states_the_g_copies_of_the_weights(capsys, tiny_onnx, tmp_path, fake_trt):
    import onnx
    from onnx import numpy_helper

    from ditq.engines.build import human_bytes

    out = tmp_path / "engines"
    assert main(["-q", "build", str(tiny_onnx.root), "-o", str(out)]) == 0
    line = next(s for s in capsys.readouterr().out.splitlines() if s.startswith("GPU memory:"))
    g = len(tiny_onnx.groups)
    plans = sum((out / f"group_{grp.group_id}.plan").stat().st_size for grp in tiny_onnx.groups)
    weights = max(sum(numpy_helper.to_array(t).nbytes for t in onnx.load(str(tiny_onnx.path(grp.group_id))).graph
                      .initializer) for grp in tiny_onnx.groups)
    assert f"the {g} engines are all loaded at once" in line
    assert f"plans {human_bytes(plans)} in total, {human_bytes(weights)} of weights per engine" in line
    assert f"(x{g} = {human_bytes(g * weights)})" in line and weights > 1024
