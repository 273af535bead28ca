import numpy as np
import onnx
import pytest
import torch

from ditq.artifacts.lint import count_quantized_gemms, lint_dir
from ditq.artifacts.onnx import OnnxArtifact
from ditq.errors import DitqError
from ditq.runtime.backends import group_denoiser, ort_session


def _run(session, x, t, y):
    from ditq.runtime.backends import onnx_feeds

    return session.run(None, onnx_feeds(x, t, y))[0]


def test_export_writes_one_graph_per_group_that_passes_lint_and_checker(tiny_onnx, tiny_recipe):
    assert len(tiny_onnx.groups) == tiny_recipe.num_groups
    assert tiny_onnx.intervals == [g.interval for g in tiny_recipe.groups]
    assert all(not v for v in lint_dir(tiny_onnx.root).values())
    n_linears = sum(len(s.linears) for s in tiny_recipe.sites)
    for g in tiny_onnx.groups:
        path = tiny_onnx.root / g.file
        onnx.checker.check_model(str(path), full_check=True)
        model = onnx.load(str(path), load_external_data=False)
        assert count_quantized_gemms(model) == n_linears
        ops = [n.op_type for n in model.graph.node]
        assert ops.count("QuantizeLinear") == n_linears  # one activation pair per consumer
        assert ops.count("DequantizeLinear") == 2 * n_linears


def test_weights_identical_across_groups_are_stored_once(tiny_onnx):
    offsets: dict[str, list[int]] = {}
    referenced = 0
    for g in tiny_onnx.groups:
        model = onnx.load(str(tiny_onnx.root / g.file), load_external_data=False)
        for t in model.graph.initializer:
            if t.data_location == onnx.TensorProto.EXTERNAL:
                info = {e.key: e.value for e in t.external_data}
                offsets.setdefault(t.name, []).append(int(info["offset"]))
                referenced += int(info["length"])
    int8_weights = [n for n in offsets if n.endswith("weight_int8")]
    assert int8_weights
    for name in int8_weights:  # every group points at the same bytes
        assert len(offsets[name]) == len(tiny_onnx.groups) and len(set(offsets[name])) == 1
    assert (tiny_onnx.root / "weights.bin").stat().st_size < referenced


@torch.no_grad()
def test_onnxruntime_qdq_matches_torch_fake_quant(tiny_onnx, tiny_model, tiny_recipe, feeds):
    """Exact QDQ semantics (no integer-kernel fusion) reproduce the torch fake-quant reference."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    for g in tiny_onnx.groups:
        sess = ort.InferenceSession(str(tiny_onnx.root / g.file), opts, providers=["CPUExecutionProvider"])
        fq = group_denoiser(tiny_model, tiny_recipe, g.group_id)
        for x, t, y in feeds([sum(g.interval) / 2]):
            ref = fq(x, t, y).numpy()
            out = _run(sess, x, t, y)
            assert np.linalg.norm(out - ref) / np.linalg.norm(ref) < 2e-3


@torch.no_grad()
def test_reference_graph_matches_torch_and_fused_int8_is_close(tiny_onnx, tiny_model, feeds):
    den = tiny_model.denoiser()
    ref_sess = ort_session(tiny_onnx.path(None))
    q_sess = ort_session(tiny_onnx.path(0))  # integer kernels, as deployed on CPU
    for x, t, y in feeds([float(tiny_onnx.groups[0].interval[0])]):
        gold = den(x, t, y).numpy()
        assert np.abs(_run(ref_sess, x, t, y) - gold).max() < 1e-4
        out = _run(q_sess, x, t, y)
        sqnr = 10 * np.log10((gold**2).sum() / ((out - gold) ** 2).sum())
        assert sqnr > 20


def test_artifact_round_trip_and_tamper_detection(tiny_onnx, tmp_path):
    import shutil

    again = OnnxArtifact.load(tiny_onnx.root)
    assert again.groups == tiny_onnx.groups and again.recipe_dir is not None and again.recipe_dir.is_dir()
    copy = tmp_path / "copy"
    shutil.copytree(tiny_onnx.root, copy)
    (copy / "group_0.onnx").write_bytes((copy / "group_1.onnx").read_bytes())
    with pytest.raises(DitqError, match="does not match the sha256"):
        OnnxArtifact.load(copy)
    (copy / "group_0.onnx").unlink()
    with pytest.raises(DitqError, match="missing"):
        OnnxArtifact.load(copy)


def test_fp16_export_is_strongly_typed_lint_clean_and_close_to_fp32(tiny_model, tiny_recipe, tiny_onnx, tmp_path,
                                                                     feeds):
    from ditq.export.onnx_export import export_onnx
    from ditq.runtime.backends import onnxruntime_backend

    art16 = export_onnx(tiny_model, tiny_recipe, tmp_path / "fp16", progress=False, precision="fp16")
    assert art16.precision == "fp16"
    assert all(not v for v in lint_dir(art16.root).values())
    model = onnx.load(str(art16.path(0)), load_external_data=False)
    fp16 = onnx.TensorProto.FLOAT16
    assert model.graph.input[0].type.tensor_type.elem_type == fp16
    assert model.graph.output[0].type.tensor_type.elem_type == fp16
    scales = [t for t in model.graph.initializer if t.name.endswith(("a_scale", "w_scale"))]
    assert scales and all(t.data_type == fp16 for t in scales)
    b32 = onnxruntime_backend(tiny_onnx, fuse=False)
    b16 = onnxruntime_backend(art16, fuse=False)
    for x, t, y in feeds([30, 500, 970]):
        o32, o16 = b32(x, t, y), b16(x, t, y)
        assert 10 * torch.log10(o32.square().sum() / (o16 - o32).square().sum()) > 40
