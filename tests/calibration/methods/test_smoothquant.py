import pytest
import torch
from method_checks import assert_fold_exact, assert_round_trip, export_and_compare, int4_weight_dqs

from ditq.errors import DitqError


def test_smoothquant_scales_follow_the_formula(calibrated):
    recipe = calibrated("smoothquant", alpha=0.8)
    assert recipe.num_groups == 1 and recipe.params == {"alpha": 0.8, "explicit": True, "act_clip_search": False,
                                                        "weight_clip_search": False,
                                                        "alphas": [0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9],
                                                        "probe_timesteps": 6, "probe_batch": 8, "rotation": 0}
    for site in recipe.sites:  # every site smoothed, fc2 (no linear producer) included, as Model Optimizer does
        assert not recipe.shift(site.name, 0).any()
        s = recipe.smooth(site.name)
        assert site.alpha == 0.8 and not torch.allclose(s, torch.ones_like(s))


def test_smoothquant_explicit_off_keeps_fc2_unsmoothed(calibrated):
    recipe = calibrated("smoothquant", alpha=0.5, explicit=False)
    for site in recipe.sites:
        s = recipe.smooth(site.name)
        if site.name.endswith("ff.net.2"):
            assert torch.equal(s, torch.ones_like(s)) and site.alpha is None
        else:
            assert site.alpha == 0.5


def test_smoothquant_smooths_every_pixart_site(pixart_model):
    """PixArt's qkv/fc1 (adaLN-single: explicit Mul), cross-attention q and the caption-fed k/v were left at s = 1:
    only the out-projections were smoothed, which is why it trailed Model Optimizer's SmoothQuant."""
    from ditq.calibration.calibrate import CalibConfig, calibrate
    from ditq.calibration.methods import method_config

    recipe = calibrate(pixart_model, method_config("smoothquant", alpha=0.8),
                       CalibConfig(steps=4, samples=2, progress=False))
    kinds = {site.name.split(".", 2)[-1] for site in recipe.sites}
    assert {"attn1.qkv", "attn2.to_q", "attn2.kv", "ff.net.0.proj", "ff.net.2"} <= kinds
    for site in recipe.sites:
        s = recipe.smooth(site.name)
        assert site.alpha == 0.8 and not torch.allclose(s, torch.ones_like(s)), site.name


def test_smoothquant_fold_round_trip_and_export(calibrated, tiny_model, tiny_reference, tmp_path):
    w8 = calibrated("smoothquant")
    assert_fold_exact(tiny_model, w8)
    assert_round_trip(w8, tmp_path / "rt")
    assert not w8.dynamic_activations
    export_and_compare(tiny_model, w8, tiny_reference, tmp_path / "w8")
    w4 = calibrated("smoothquant", w_bits=4, w_block=32)
    art = export_and_compare(tiny_model, w4, tiny_reference, tmp_path / "w4")
    assert len(int4_weight_dqs(art)) == sum(len(s.linears) for s in w4.sites)


def test_smoothquant_alpha_is_checked():
    from ditq.calibration.methods import method_config

    with pytest.raises(DitqError, match="alpha"):
        method_config("smoothquant", alpha=1.5)
