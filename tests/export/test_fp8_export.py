"""W8A8-FP8 end to end on the tiny model: recipe round trip, FLOAT8E4M3FN Q/DQ export, lint, ONNX Runtime exactness."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto

from ditq.artifacts.lint import count_quantized_gemms, lint_dir
from ditq.artifacts.recipe import LinearSpec, Recipe
from ditq.errors import DitqError
from ditq.runtime.backends import group_denoiser, onnx_feeds


@pytest.fixture(scope="module")
def fp8_recipe_dir(tiny_model, tmp_path_factory):
    from ditq.calibration.calibrate import CalibConfig, calibrate
    from ditq.calibration.methods import method_config

    recipe = calibrate(tiny_model, method_config("htg", groups=3),
                       CalibConfig(steps=20, samples=4, progress=False, fmt="fp8_e4m3"))
    return recipe.save(tmp_path_factory.mktemp("fp8") / "recipe")


@pytest.fixture(scope="module")
def fp8_onnx(tiny_model, fp8_recipe_dir, tmp_path_factory):
    from ditq.export.onnx_export import export_onnx

    return export_onnx(tiny_model, Recipe.load(fp8_recipe_dir), tmp_path_factory.mktemp("fp8") / "onnx",
                       recipe_dir=fp8_recipe_dir, progress=False)


def test_fp8_recipe_round_trips_and_marks_every_linear(fp8_recipe_dir, tiny_recipe):
    recipe = Recipe.load(fp8_recipe_dir)
    linears = [lin for s in recipe.sites for lin in s.linears]
    assert recipe.formats == ("fp8_e4m3",) and tiny_recipe.formats == ("int",)
    assert all(recipe.linear_spec(lin) == LinearSpec(fmt="fp8_e4m3") for lin in linears)
    body = json.loads((fp8_recipe_dir / "recipe.json").read_text())
    assert {spec["fmt"] for spec in body["linears"].values()} == {"fp8_e4m3"}


def test_recipes_without_a_format_read_as_int_and_bad_formats_are_refused():
    old = {"w_bits": 8, "w_block": 0, "act": "static", "a_bits": 8, "a_group": 0, "rotation": 0}
    assert LinearSpec.from_body(old) == LinearSpec() and LinearSpec().body() == old  # int bodies unchanged
    assert LinearSpec.from_body(LinearSpec(fmt="fp8_e4m3").body()).fmt == "fp8_e4m3"
    for bad in ({"fmt": "fp8_e5m2"}, {"fmt": "fp8_e4m3", "w_bits": 4}, {"fmt": "fp8_e4m3", "act": "dynamic_token"},
                {"fmt": "fp8_e4m3", "w_block": 32}):
        with pytest.raises(DitqError):
            LinearSpec(**bad)


def test_fp8_export_stores_float8_weights_and_zero_points_and_passes_tensorrt_lint(fp8_onnx, fp8_recipe_dir):
    recipe = Recipe.load(fp8_recipe_dir)
    n_linears = sum(len(s.linears) for s in recipe.sites)
    for target in ("onnxruntime", "tensorrt-10", "tensorrt-11"):
        assert all(not v for v in lint_dir(fp8_onnx.root, target).values()), target
    assert fp8_onnx.recipe["weight_formats"] == ["FP8E4M3/channel"]
    for g in fp8_onnx.groups:
        model = onnx.load(str(fp8_onnx.root / g.file), load_external_data=False)
        assert model.opset_import[0].version >= 19
        assert count_quantized_gemms(model) == n_linears
        inits = {t.name: t for t in model.graph.initializer}
        weights = [t for name, t in inits.items() if name.endswith(".weight_fp8")]
        zps = [t for name, t in inits.items() if name.endswith("zero_point")]
        assert len(weights) == n_linears and len(zps) == 2 * n_linears
        assert {t.data_type for t in weights + zps} == {TensorProto.FLOAT8E4M3FN}
        dq_w = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0].endswith("_fp8")]
        assert {next(a.i for a in n.attribute if a.name == "axis") for n in dq_w} == {1}  # W^T [K, N]: axis 1


@torch.no_grad()
def test_onnxruntime_fp8_qdq_reproduces_the_torch_fake_quant_exactly(fp8_onnx, fp8_recipe_dir, tiny_model, feeds):
    import onnxruntime as ort

    recipe = Recipe.load(fp8_recipe_dir)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    fp = tiny_model.denoiser()
    for g in fp8_onnx.groups:
        sess = ort.InferenceSession(str(fp8_onnx.root / g.file), opts, providers=["CPUExecutionProvider"])
        fq = group_denoiser(tiny_model, recipe, g.group_id)
        for x, t, y in feeds([sum(g.interval) / 2]):
            ref, out = fq(x, t, y).numpy(), sess.run(None, onnx_feeds(x, t, y))[0]
            # float summation order is all that differs: orders of magnitude below the FP8 error itself
            err = np.linalg.norm(out - ref) / np.linalg.norm(ref)
            fp8_err = np.linalg.norm(ref - fp.predict(x, t, y).numpy()) / np.linalg.norm(ref)
            # float summation order upstream can move a rare value across an E4M3 rounding boundary (a 1/16
            # step): the graphs agree to far below the FP8 error itself
            assert err < 2e-3 and fp8_err > 5 * err, (g.group_id, err, fp8_err)


def test_onnxruntime_fp8_quantize_linear_is_bit_exact_with_the_torch_grid():
    """The per-tensor activation Q/DQ and per-channel weight DQ the exporter writes, on values that cover
    subnormals, ties and saturation: ONNX Runtime (CPU) and ``fake_quant(..., fmt="fp8_e4m3")`` agree exactly."""
    import ml_dtypes
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    from ditq.core.quantizers import fake_quant, quantize_weight

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, 16, generator=gen) * torch.exp2(torch.randint(-12, 12, (64, 16), generator=gen).float())
    w = torch.randn(8, 16, generator=gen)
    a_scale, w_scale = 0.75, w.abs().amax(1) / 448 * 0.9  # a clipped weight scale saturates its largest codes
    codes = quantize_weight(w, w_scale, fmt="fp8_e4m3").T.contiguous().numpy()
    f8 = ml_dtypes.float8_e4m3fn
    inits = [numpy_helper.from_array(np.array(a_scale, np.float32), "s_a"),
             numpy_helper.from_array(np.array(0, f8), "zp_a"),
             numpy_helper.from_array(codes.astype(f8), "w_fp8"),
             numpy_helper.from_array(w_scale.numpy(), "s_w"),
             numpy_helper.from_array(np.zeros(8, f8), "zp_w")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s_a", "zp_a"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s_a", "zp_a"], ["x_dq"]),
             helper.make_node("DequantizeLinear", ["w_fp8", "s_w", "zp_w"], ["w_dq"], axis=1)]
    graph = helper.make_graph(nodes, "fp8", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [64, 16])],
                              [helper.make_tensor_value_info("x_dq", TensorProto.FLOAT, [64, 16]),
                               helper.make_tensor_value_info("w_dq", TensorProto.FLOAT, [16, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)], ir_version=9)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x_dq, w_dq = sess.run(None, {"x": x.numpy()})
    assert np.array_equal(x_dq, fake_quant(x, a_scale, fmt="fp8_e4m3").numpy())
    assert np.abs(x_dq).max() == 448 * a_scale  # saturated, not NaN
    assert np.array_equal(w_dq, (torch.from_numpy(codes.astype(np.float32)) * w_scale).numpy())


@torch.no_grad()
def test_fp16_tensorrt_fp8_export_is_strongly_typed_and_runs_on_onnxruntime(tiny_model, fp8_recipe_dir, tmp_path,
                                                                           feeds):
    """What TensorRT 11 builds (an FP16 graph, FP16 Q/DQ scales, FLOAT8E4M3FN codes) lints clean for TensorRT and
    stays close to the FP32 fake-quant reference on ONNX Runtime."""
    import onnxruntime as ort

    from ditq.export.onnx_export import export_onnx

    recipe = Recipe.load(fp8_recipe_dir)
    art = export_onnx(tiny_model, recipe, tmp_path / "onnx16", recipe_dir=fp8_recipe_dir, progress=False,
                      precision="fp16", target="tensorrt")
    assert all(not v for v in lint_dir(art.root, "tensorrt-11").values())
    g = art.groups[0]
    model = onnx.load(str(art.root / g.file), load_external_data=False)
    scales = [t for t in model.graph.initializer if t.name.endswith(("w_scale", "a_scale"))]
    assert scales and {t.data_type for t in scales} == {TensorProto.FLOAT16}
    sess = ort.InferenceSession(str(art.root / g.file), providers=["CPUExecutionProvider"])
    for x, t, y in feeds([sum(g.interval) / 2]):
        feed = {k: v.astype(np.float16) if v.dtype == np.float32 else v for k, v in onnx_feeds(x, t, y).items()}
        out = sess.run(None, feed)[0].astype(np.float32)
        ref = group_denoiser(tiny_model, recipe, g.group_id)(x, t, y).numpy()
        assert np.linalg.norm(out - ref) / np.linalg.norm(ref) < 2e-2


def test_fp8_htg_leaves_one_sided_post_gelu_inputs_unshifted(fp8_recipe_dir, tiny_recipe):
    """E4M3 is finest near 0: the mid-range shift that centres fc2's post-GELU input for INT8 moves its bulk to
    where FP8 is coarse, so FP8 HTG keeps it unshifted (chosen by the same output-error search); INT8 shifts it."""
    recipe = Recipe.load(fp8_recipe_dir)
    fc2 = [s.name for s in recipe.sites if s.name.endswith("ff.net.2")]
    assert fc2
    for name in fc2:
        assert not any(recipe.shift(name, g.group_id).any() for g in recipe.groups)
        assert tiny_recipe.shift(name, 0).any()
