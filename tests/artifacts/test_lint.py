"""The QDQ lint accepts the exporter's graph conventions and catches each TensorRT rule violation."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import ml_dtypes
import numpy as np
import onnx
import onnxruntime as ort  # type: ignore[import-untyped]
import pytest
from onnx import TensorProto, helper, numpy_helper

from ditq.artifacts.lint import (
    RULES,
    Violation,
    count_quantized_gemms,
    format_violations,
    lint_dir,
    lint_file,
    lint_model,
    tensorrt_target,
)
from ditq.errors import DitqError

RNG = np.random.default_rng(0)


def build_model(dtype: type = np.float32, int4_axis: int | None = None) -> onnx.ModelProto:
    """x [B,8,16] -> Q/DQ -> MatMul(W1 int8 [16,32]) -> Add bias -> Relu -> Q/DQ -> MatMul(W2 [32,8]) -> y.

    Opset 19 (FP16 Q/DQ needs it). With `int4_axis`, W2 is an INT4 weight block-quantized
    (block_size 4) along that axis, at opset 21.
    """
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    inits = [
        numpy_helper.from_array(np.array(0.05, dtype), "s_x"),
        numpy_helper.from_array(np.array(0.1, dtype), "s_h"),
        numpy_helper.from_array(np.array(0, np.int8), "zp_a"),
        numpy_helper.from_array(RNG.integers(-127, 128, (16, 32)).astype(np.int8), "W1"),
        numpy_helper.from_array(np.full(32, 0.01, dtype), "s_w1"),
        numpy_helper.from_array(np.zeros(32, np.int8), "zp_w1"),
        numpy_helper.from_array(RNG.standard_normal(32).astype(dtype), "b1"),
    ]
    w2_dq = helper.make_node("DequantizeLinear", ["W2", "s_w2", "zp_w2"], ["w2"], name="dq_w2", axis=1)
    if int4_axis is None:
        inits += [numpy_helper.from_array(RNG.integers(-127, 128, (32, 8)).astype(np.int8), "W2"),
                  numpy_helper.from_array(np.full(8, 0.02, dtype), "s_w2"),
                  numpy_helper.from_array(np.zeros(8, np.int8), "zp_w2")]
    else:
        scale_shape = [32 // 4, 8] if int4_axis == 0 else [32, 8 // 4]
        inits += [numpy_helper.from_array(RNG.integers(-8, 8, (32, 8)).astype(ml_dtypes.int4), "W2"),
                  numpy_helper.from_array(np.full(scale_shape, 0.02, dtype), "s_w2"),
                  numpy_helper.from_array(np.zeros(scale_shape, ml_dtypes.int4), "zp_w2")]
        w2_dq = helper.make_node("DequantizeLinear", ["W2", "s_w2", "zp_w2"], ["w2"], name="dq_w2",
                                 axis=int4_axis, block_size=4)
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s_x", "zp_a"], ["x_q"], name="q_x"),
        helper.make_node("DequantizeLinear", ["x_q", "s_x", "zp_a"], ["x_dq"], name="dq_x"),
        helper.make_node("DequantizeLinear", ["W1", "s_w1", "zp_w1"], ["w1"], name="dq_w1", axis=1),
        helper.make_node("MatMul", ["x_dq", "w1"], ["h1"], name="mm1"),
        helper.make_node("Add", ["h1", "b1"], ["h2"], name="add1"),
        helper.make_node("Relu", ["h2"], ["h3"], name="relu"),
        helper.make_node("QuantizeLinear", ["h3", "s_h", "zp_a"], ["h_q"], name="q_h"),
        helper.make_node("DequantizeLinear", ["h_q", "s_h", "zp_a"], ["h_dq"], name="dq_h"),
        w2_dq,
        helper.make_node("MatMul", ["h_dq", "w2"], ["y"], name="mm2"),
    ]
    graph = helper.make_graph(nodes, "qdq", [helper.make_tensor_value_info("x", elem, ["B", 8, 16])],
                              [helper.make_tensor_value_info("y", elem, ["B", 8, 8])], inits)
    opset = 19 if int4_axis is None else 21
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                             ir_version=9 if int4_axis is None else 10)


def _rules(model: onnx.ModelProto) -> set[str]:
    return {v.rule for v in lint_model(model)}


def _node(model: onnx.ModelProto, name: str) -> onnx.NodeProto:
    return next(n for n in model.graph.node if n.name == name)


def _set_init(model: onnx.ModelProto, name: str, value: np.ndarray) -> None:
    init = next(t for t in model.graph.initializer if t.name == name)
    init.CopyFrom(numpy_helper.from_array(value, name))


def _set_attr(node: onnx.NodeProto, **attrs: int) -> None:
    for key, value in attrs.items():
        node.attribute.remove(next(a for a in node.attribute if a.name == key))
        node.attribute.append(helper.make_attribute(key, value))


def _insert_after(model: onnx.ModelProto, anchor: str, *nodes: onnx.NodeProto) -> None:
    index = next(i for i, n in enumerate(model.graph.node) if n.name == anchor)
    for offset, node in enumerate(nodes, 1):
        model.graph.node.insert(index + offset, node)


def _run(model: onnx.ModelProto, dtype: type) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {"x": RNG.standard_normal((2, 8, 16)).astype(dtype)})
    return y


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_valid_model_passes_checker_ort_and_lint(dtype: type) -> None:
    model = build_model(dtype)
    onnx.checker.check_model(model, full_check=True)
    y = _run(model, dtype)
    assert y.shape == (2, 8, 8) and y.dtype == dtype and np.isfinite(y).all()
    assert lint_model(model) == []
    assert count_quantized_gemms(model) == 2


def test_int4_block_weight_with_int8_activation_is_onnxruntime_only() -> None:
    """W4A8: ONNX Runtime runs it; TensorRT has no INT4 x INT8 GEMM, so both TensorRT targets refuse it."""
    model = build_model(int4_axis=0)
    onnx.checker.check_model(model, full_check=True)
    assert np.isfinite(_run(model, np.float32)).all()
    assert lint_model(model, target="onnxruntime") == []
    assert count_quantized_gemms(model) == 2
    for target in ("tensorrt-10", "tensorrt-11"):
        violations = lint_model(model, target=target)
        assert [(v.rule, v.node) for v in violations] == [("int4-weight-only", "mm2")]
        assert "--target tensorrt" in violations[0].message


def _weight_only_w2(m: onnx.ModelProto) -> None:
    """W4A16 on mm2: drop its activation Q/DQ and the INT4 zero point (as Model Optimizer writes it)."""
    _node(m, "mm2").input[0] = "h3"
    for name in ("q_h", "dq_h"):
        m.graph.node.remove(_node(m, name))
    dq = _node(m, "dq_w2")
    del dq.input[2]
    m.graph.initializer.remove(next(t for t in m.graph.initializer if t.name == "zp_w2"))


@pytest.mark.parametrize("target", ["onnxruntime", "tensorrt-10", "tensorrt-11"])
def test_int4_weight_only_without_zero_point_passes_every_target(target: str) -> None:
    model = build_model(int4_axis=0)
    _weight_only_w2(model)
    onnx.checker.check_model(model, full_check=True)
    assert np.isfinite(_run(model, np.float32)).all()  # ONNX Runtime takes an INT4 DQ without zero point
    assert lint_model(model, target=target) == []


def test_int8_weight_only_still_needs_both_inputs() -> None:
    model = build_model()
    _node(model, "mm2").input[0] = "h3"
    assert {v.rule for v in lint_model(model, target="onnxruntime")} == {"gemm-both-inputs"}


def _int8_blocks(m: onnx.ModelProto) -> None:
    """INT8 W2 [32, 8] dequantized in blocks of 4 along K (``--w-bits 8 --w-block``)."""
    _set_init(m, "s_w2", np.full((8, 8), 0.02, np.float32))
    _set_init(m, "zp_w2", np.zeros((8, 8), np.int8))
    _set_attr(_node(m, "dq_w2"), axis=0)
    _node(m, "dq_w2").attribute.append(helper.make_attribute("block_size", 4))
    m.opset_import[0].version, m.ir_version = 21, 10


def test_int8_blocks_are_refused_by_tensorrt_targets_only() -> None:
    model = build_model()
    _int8_blocks(model)
    onnx.checker.check_model(model, full_check=True)
    assert lint_model(model, target="onnxruntime") == []
    for target in ("tensorrt-10", "tensorrt-11"):
        violations = lint_model(model, target=target)
        assert [(v.rule, v.node) for v in violations] == [("block-type", "dq_w2")]
        assert "INT8" in violations[0].message and target in violations[0].message


def test_tensorrt_target_follows_the_major_and_unknown_targets_are_refused() -> None:
    assert tensorrt_target("10.13.0.35") == "tensorrt-10" and tensorrt_target("11.1.0") == "tensorrt-11"
    assert tensorrt_target(None) == tensorrt_target("12.0") == "tensorrt-11"
    with pytest.raises(DitqError, match="older than 10.0"):
        tensorrt_target("8.6.1")
    with pytest.raises(DitqError, match="unknown lint target 'tensorrt-9'"):
        lint_model(build_model(), target="tensorrt-9")


def test_int4_block_weight_on_output_axis_is_flagged() -> None:
    model = build_model(int4_axis=1)
    onnx.checker.check_model(model, full_check=True)
    violations = lint_model(model, target="onnxruntime")
    assert {v.rule for v in violations} == {"per-channel-axis"}
    assert violations[0].node == "dq_w2" and "expected axis=0" in violations[0].message


def test_constant_node_scales_are_accepted() -> None:
    model = build_model()
    scale = next(t for t in model.graph.initializer if t.name == "s_x")
    model.graph.node.insert(0, helper.make_node("Constant", [], ["s_x"], name="const_s_x", value=scale))
    model.graph.initializer.remove(scale)
    onnx.checker.check_model(model, full_check=True)
    assert lint_model(model) == []


@pytest.mark.parametrize(
    "trans_b, axis, rules",
    [(1, 0, set()), (0, 1, set()), (1, 1, {"per-channel-axis"}), (0, 0, {"per-channel-axis"})],
)
def test_gemm_weight_axis_follows_trans_b(trans_b: int, axis: int, rules: set[str]) -> None:
    shape = [32, 16] if trans_b else [16, 32]
    inits = [numpy_helper.from_array(np.array(0.05, np.float32), "s_x"),
             numpy_helper.from_array(np.array(0, np.int8), "zp"),
             numpy_helper.from_array(RNG.integers(-127, 128, shape).astype(np.int8), "W"),
             numpy_helper.from_array(np.full(shape[axis], 0.01, np.float32), "s_w"),
             numpy_helper.from_array(np.zeros(shape[axis], np.int8), "zp_w"),
             numpy_helper.from_array(np.zeros(32, np.float32), "bias")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s_x", "zp"], ["x_q"], name="q_x"),
             helper.make_node("DequantizeLinear", ["x_q", "s_x", "zp"], ["x_dq"], name="dq_x"),
             helper.make_node("DequantizeLinear", ["W", "s_w", "zp_w"], ["w"], name="dq_w", axis=axis),
             helper.make_node("Gemm", ["x_dq", "w", "bias"], ["y"], name="gemm", transB=trans_b)]
    graph = helper.make_graph(nodes, "gemm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 32])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)], ir_version=9)
    onnx.checker.check_model(model, full_check=True)
    assert _rules(model) == rules


def _nonzero_zp(m: onnx.ModelProto) -> None:
    _set_init(m, "zp_w1", np.full(32, 3, np.int8))


def _uint8_zp(m: onnx.ModelProto) -> None:
    _set_init(m, "zp_a", np.array(0, np.uint8))


def _q_without_zero_point(m: onnx.ModelProto) -> None:  # ONNX then quantizes to UINT8
    for name in ("q_x", "dq_x"):
        del _node(m, name).input[2]


def _scale_from_mul(m: onnx.ModelProto) -> None:
    m.graph.initializer.remove(next(t for t in m.graph.initializer if t.name == "s_x"))
    m.graph.initializer.extend([numpy_helper.from_array(np.array(0.025, np.float32), "s_half"),
                                numpy_helper.from_array(np.array(2.0, np.float32), "two")])
    m.graph.node.insert(0, helper.make_node("Mul", ["s_half", "two"], ["s_x"], name="mul_scale"))


def _negative_scale(m: onnx.ModelProto) -> None:
    _set_init(m, "s_w1", np.full(32, -0.01, np.float32))


def _zero_scale(m: onnx.ModelProto) -> None:
    _set_init(m, "s_x", np.array(0.0, np.float32))


def _per_channel_activation(m: onnx.ModelProto) -> None:
    _set_init(m, "s_x", np.full(16, 0.05, np.float32))
    for name in ("q_x", "dq_x"):
        _node(m, name).attribute.append(helper.make_attribute("axis", -1))


def _wrong_weight_axis(m: onnx.ModelProto) -> None:
    _set_init(m, "s_w1", np.full(16, 0.01, np.float32))
    _set_init(m, "zp_w1", np.zeros(16, np.int8))
    _set_attr(_node(m, "dq_w1"), axis=0)


def _dq_on_one_input(m: onnx.ModelProto) -> None:
    for name in ("q_h", "dq_h"):
        m.graph.node.remove(_node(m, name))
    _node(m, "mm2").input[0] = "h3"


def _q_after_bias_add(m: onnx.ModelProto) -> None:
    _node(m, "relu").input[0] = "h2_dq"
    _insert_after(m, "add1",
                  helper.make_node("QuantizeLinear", ["h2", "s_h", "zp_a"], ["h2_q"], name="q_out"),
                  helper.make_node("DequantizeLinear", ["h2_q", "s_h", "zp_a"], ["h2_dq"], name="dq_out"))


def _q_on_gemm_output(m: onnx.ModelProto) -> None:
    _node(m, "mm2").output[0] = "y_mm"
    _insert_after(m, "mm2",
                  helper.make_node("QuantizeLinear", ["y_mm", "s_h", "zp_a"], ["y_q"], name="q_out"),
                  helper.make_node("DequantizeLinear", ["y_q", "s_h", "zp_a"], ["y"], name="dq_out"))


def _cast(src: str, dst: str) -> onnx.NodeProto:
    return helper.make_node("Cast", [src], [dst], name="cast", to=TensorProto.FLOAT)


def _cast_between(m: onnx.ModelProto) -> None:
    _node(m, "mm1").input[1] = "w1_cast"
    _insert_after(m, "dq_w1", _cast("w1", "w1_cast"))


def _cast_then_transpose(m: onnx.ModelProto) -> None:
    _node(m, "mm1").input[1] = "w1_t"
    _insert_after(m, "dq_w1", _cast("w1", "w1_cast"),
                  helper.make_node("Transpose", ["w1_cast"], ["w1_t"], name="transpose", perm=[0, 1]))


def _fp16_scale_in_fp32_graph(m: onnx.ModelProto) -> None:
    _set_init(m, "s_x", np.array(0.05, np.float16))


def _q_without_dq(m: onnx.ModelProto) -> None:
    m.graph.node.append(helper.make_node("QuantizeLinear", ["h3", "s_h", "zp_a"], ["dangling"], name="q_y"))
    m.graph.output.append(helper.make_tensor_value_info("dangling", TensorProto.INT8, ["B", 8, 32]))


def _pair_scale_mismatch(m: onnx.ModelProto) -> None:
    m.graph.initializer.append(numpy_helper.from_array(np.array(0.2, np.float32), "s_other"))
    _node(m, "dq_h").input[1] = "s_other"


def _fp8_weight_with_int8_activation(m: onnx.ModelProto) -> None:
    w1 = numpy_helper.to_array(next(t for t in m.graph.initializer if t.name == "W1"))
    _set_init(m, "W1", w1.astype(np.float32).astype(ml_dtypes.float8_e4m3fn))
    _set_init(m, "zp_w1", np.zeros(32, ml_dtypes.float8_e4m3fn))


BROKEN: list[tuple[str, Callable[[onnx.ModelProto], None]]] = [
    ("zero-point", _nonzero_zp),
    ("zero-point", _uint8_zp),
    ("zero-point", _q_without_zero_point),
    ("scale-constant", _scale_from_mul),
    ("scale-positive", _negative_scale),
    ("scale-positive", _zero_scale),
    ("per-channel-activation", _per_channel_activation),
    ("per-channel-axis", _wrong_weight_axis),
    ("gemm-both-inputs", _dq_on_one_input),
    ("qdq-on-output", _q_after_bias_add),
    ("qdq-on-output", _q_on_gemm_output),
    ("cast-between-dq-gemm", _cast_between),
    ("cast-between-dq-gemm", _cast_then_transpose),
    ("float-type", _fp16_scale_in_fp32_graph),
    ("activation-pair", _q_without_dq),
    ("activation-pair", _pair_scale_mismatch),
    ("block-type", _int8_blocks),
    ("mixed-types", _fp8_weight_with_int8_activation),
]


@pytest.mark.parametrize("rule, breaker", BROKEN, ids=[f.__name__.strip("_") for _, f in BROKEN])
def test_each_rule_is_caught_alone(rule: str, breaker: Callable[[onnx.ModelProto], None]) -> None:
    model = build_model()
    breaker(model)
    violations = lint_model(model)
    assert {v.rule for v in violations} == {rule}, violations
    assert all(v.message and "\n" not in v.message for v in violations)


def test_every_rule_has_a_breaking_case() -> None:  # int4-weight-only: test_int4_block_weight_with_int8_activation
    assert {rule for rule, _ in BROKEN} | {"int4-weight-only"} == set(RULES)


def test_violation_names_the_node_and_bad_value() -> None:
    model = build_model()
    _nonzero_zp(model)
    message = "zero point 'zp_w1' must be 0, has 32 nonzero value(s): 3, 3, 3, 3, ..."
    assert lint_model(model) == [Violation("zero-point", "dq_w1", message)]


def test_lint_dir_reads_scales_from_external_data(tmp_path: Path) -> None:
    broken = build_model()
    _negative_scale(broken)
    for name, model, location in [("good.onnx", build_model(), "weights.bin"),
                                  ("broken.onnx", broken, "broken.bin")]:
        onnx.save_model(model, str(tmp_path / name), save_as_external_data=True,
                        all_tensors_to_one_file=True, location=location, size_threshold=0)
    loaded = onnx.load(str(tmp_path / "good.onnx"), load_external_data=False)
    assert all(t.data_location == TensorProto.EXTERNAL for t in loaded.graph.initializer)

    results = lint_dir(tmp_path)
    assert list(results) == ["broken.onnx", "good.onnx"]
    assert results["good.onnx"] == []
    assert {v.rule for v in results["broken.onnx"]} == {"scale-positive"}
    assert lint_file(tmp_path / "broken.onnx") == results["broken.onnx"]

    report = format_violations(results).splitlines()
    assert report[0].startswith("broken.onnx: [scale-positive] dq_w1: scale 's_w1'")
    assert report[-1] == "1 violation(s) (scale-positive: 1) in 1 of 2 file(s)"
    assert format_violations({"good.onnx": []}) == "0 violations in 1 file(s)"


def test_missing_inputs_raise_ditq_error(tmp_path: Path) -> None:
    with pytest.raises(DitqError, match="no \\*.onnx files"):
        lint_dir(tmp_path)
    with pytest.raises(DitqError, match="does not exist"):
        lint_file(tmp_path / "nope.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not a protobuf \xff\xff")
    with pytest.raises(DitqError, match="cannot read"):
        lint_file(tmp_path / "junk.onnx")


def _to_fp8(model: onnx.ModelProto) -> onnx.ModelProto:
    """``build_model()`` with every INT8 code and zero point as FLOAT8E4M3FN (the W8A8-FP8 export pattern)."""
    for init in list(model.graph.initializer):
        if init.data_type == TensorProto.INT8:
            value = numpy_helper.to_array(init).astype(np.float32) / 4  # codes within E4M3's +-448
            _set_init(model, init.name, value.astype(ml_dtypes.float8_e4m3fn))
    return model


@pytest.mark.parametrize("target", ["onnxruntime", "tensorrt-10", "tensorrt-11"])
def test_fp8_qdq_passes_every_target_and_runs_on_onnxruntime(target: str) -> None:
    model = _to_fp8(build_model())
    assert lint_model(model, target=target) == []
    assert count_quantized_gemms(model) == 2
    assert np.isfinite(_run(model, np.float32)).all()


def test_fp8_rules_zero_point_axis_and_activation_scale() -> None:
    model = _to_fp8(build_model())
    _set_init(model, "zp_a", np.array(1.0, ml_dtypes.float8_e4m3fn))
    assert {v.rule for v in lint_model(model)} == {"zero-point"}
    model = _to_fp8(build_model())
    _wrong_weight_axis(model)
    _set_init(model, "zp_w1", np.zeros(16, ml_dtypes.float8_e4m3fn))
    assert {v.rule for v in lint_model(model)} == {"per-channel-axis"}
    model = _to_fp8(build_model())
    _per_channel_activation(model)
    assert {v.rule for v in lint_model(model)} == {"per-channel-activation"}
    model = _to_fp8(build_model())
    _negative_scale(model)
    assert {v.rule for v in lint_model(model)} == {"scale-positive"}
