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
