import torch
from method_checks import assert_fold_exact, assert_round_trip, export_and_compare, int4_weight_dqs

from ditq.calibration.methods.viditq import rotation_block
from ditq.core.quantizers import hadamard, rotation_matrix


def test_hadamard_rotation_is_orthogonal_and_exact_in_fp():
    from torch import nn

    from ditq.core.qlinear import QLinear

    for n in (1, 2, 32, 128):
        h = hadamard(n)
        assert torch.allclose(h @ h.T, torch.eye(n, dtype=torch.float64), atol=1e-12)
    r = rotation_matrix(96, 32)  # block-diagonal when K is not a power of two
    assert torch.allclose(r @ r.T, torch.eye(96, dtype=torch.float64), atol=1e-12)
    assert rotation_block(96) == 32 and rotation_block(128) == 128 and rotation_block(128, 64) == 64
    lin = nn.Linear(96, 16)
    x = torch.randn(5, 7, 96)
    with torch.no_grad():
        assert (QLinear(lin, rotation=32)(x) - lin(x)).abs().max() < 1e-5


def test_viditq_recipe_specs_and_mixed_precision(calibrated):
    w8 = calibrated("viditq")
    assert w8.dynamic_activations and "no-op" in w8.calibration["method"]["mixed_precision"]
    for site in w8.sites:
        for lin in site.linears:
            spec, k = w8.linear_spec(lin), w8.smooth(site.name).numel()
            assert spec.act == "dynamic_token" and spec.rotation == k and spec.w_bits == 8  # tiny K: 32, 128
    w4 = calibrated("viditq", w_bits=4)
    info = w4.calibration["method"]
    params = {s.name: sum(w4.w_scale(lin).shape[0] * w4.smooth(s.name).numel() for lin in s.linears)
              for s in w4.sites}
    assert 4.0 <= info["mean_weight_bits"] <= 4.5  # the default budget: +0.5 mean bits
    assert set(info["w8_sites"]) == {s.name for s in w4.sites if w4.linear_spec(s.linears[0]).w_bits == 8}
    assert sum(params[s] for s in info["w8_sites"]) * 4 <= 0.5 * sum(params.values())
    assert len(info["segment_timesteps"]) == 2 and all(len(v) == 2 for v in info["sensitivity"].values())


def test_viditq_fold_round_trip_and_export(calibrated, tiny_model, tiny_reference, tmp_path):
    w8 = calibrated("viditq")
    assert_fold_exact(tiny_model, w8)  # smoothing folded, Hadamard rotation online: the FP model is unchanged
    assert_round_trip(w8, tmp_path / "rt")
    export_and_compare(tiny_model, w8, tiny_reference, tmp_path / "w8")
    w4 = calibrated("viditq", w_bits=4)
    art = export_and_compare(tiny_model, w4, tiny_reference, tmp_path / "w4")
    n4 = sum(len(s.linears) for s in w4.sites if w4.linear_spec(s.linears[0]).w_bits == 4)
    assert 0 < len(int4_weight_dqs(art)) == n4


def test_viditq_per_token_exports_in_tensorrt_form(calibrated, tiny_model, tmp_path):
    """Per-token activations: a constant-scale (1) Q/DQ on ``x / s`` into a GEMM with DQs on both inputs, its
    output times ``s``; the FP16 TensorRT set is lint-clean for every TensorRT version and passes check_deployable."""
    import onnx

    from ditq.artifacts.lint import TARGETS, lint_onnx_set
    from ditq.engines.build import check_deployable
    from ditq.export.onnx_export import export_onnx

    w8 = calibrated("viditq")
    assert w8.dynamic_activations and w8.float_quantized_linears == ()
    w8.save(tmp_path / "recipe")
    art = export_onnx(tiny_model, w8, tmp_path / "onnx", recipe_dir=tmp_path / "recipe", progress=False,
                      precision="fp16", target="tensorrt")
    assert art.recipe["float_quantized_activations"] is False
    for target in (t for t in TARGETS if t.startswith("tensorrt")):
        assert not any(lint_onnx_set(art, target).values()), target
    check_deployable(art)
    graph = onnx.load(str(art.path(0)), load_external_data=False).graph
    consts = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer
              if t.data_location != onnx.TensorProto.EXTERNAL}
    producer = {o: n for n in graph.node for o in n.output}
    linears = [lin for s in w8.sites for lin in s.linears]
    for lin in linears:
        rescale = next(n for n in graph.node if n.name == f"{lin}.token_rescale")
        mm = producer[rescale.input[0]]
        assert rescale.op_type == "Mul" and mm.op_type == "MatMul" and producer[rescale.input[1]].op_type == "Max"
        dq_x, dq_w = producer[mm.input[0]], producer[mm.input[1]]
        assert dq_x.op_type == dq_w.op_type == "DequantizeLinear"
        q = producer[dq_x.input[0]]
        assert q.op_type == "QuantizeLinear" and float(consts[q.input[1]]) == 1.0 == float(consts[dq_x.input[1]])
        assert producer[q.input[0]].op_type == "Div" and producer[q.input[0]].input[1] == rescale.input[1]
    # one scale per input tensor (q/k/v share theirs), one Q/DQ pair per Linear
    assert 0 < sum(n.op_type == "ReduceMax" for n in graph.node) < len(linears)
    assert sum(n.op_type == "QuantizeLinear" for n in graph.node) == len(linears)
    assert not any(n.op_type in ("Round", "Clip") for n in graph.node)  # no float fake-quant left


def test_channel_group_activations_stay_float_ops_and_are_refused_for_tensorrt(calibrated):
    """A scale that varies along K is no row factor of the GEMM: such Linears (Q-DiT's narrower groups) keep the
    float form, and a TensorRT export refuses them."""
    from dataclasses import replace

    import pytest

    from ditq.errors import DitqError
    from ditq.export.onnx_export import weight_only_linears

    base = calibrated("viditq")
    lin = base.sites[0].linears[0]
    grouped = replace(base, linear_specs={**base.linear_specs,
                                          lin: replace(base.linear_spec(lin), act="dynamic_group", a_group=16)})
    assert grouped.float_quantized_linears == (lin,)
    with pytest.raises(DitqError, match="channel group"):
        weight_only_linears(grouped, "tensorrt")


def test_viditq_rotation_signs_ride_on_the_smoothing_vector(calibrated, tiny_model, tiny_reference, tmp_path):
    """``rotation_signs`` (default on): the randomized Hadamard's signs multiply the smoothing vector (the online
    rotation stays the plain Sylvester one); the FP fold stays exact and the export still matches the fake-quant
    backend. ``rotation_signs=False`` keeps a positive smoothing (the plain Hadamard)."""
    from ditq.core.quantizers import rotation_signs

    plain, signed = calibrated("viditq", rotation_signs=False), calibrated("viditq")
    for site in signed.sites:
        s, p = signed.smooth(site.name), plain.smooth(site.name)
        assert bool((p > 0).all()), site.name
        assert torch.equal(s.sign(), rotation_signs(s.numel())) and torch.allclose(s.abs(), p), site.name
    assert_fold_exact(tiny_model, signed)
    export_and_compare(tiny_model, signed, tiny_reference, tmp_path / "signed")
