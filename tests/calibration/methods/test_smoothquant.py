import pytest
import torch
from method_checks import assert_fold_exact, assert_round_trip, export_and_compare, int4_weight_dqs

from ditq.errors import DitqError


def test_smoothquant_scales_follow_the_formula(calibrated):
    recipe = calibrated("smoothquant")
    assert recipe.num_groups == 1 and recipe.params == {"alpha": 0.5, "explicit": False, "act_clip_search": False,
                                                        "weight_clip_search": False}
    for site in recipe.sites:
        assert not recipe.shift(site.name, 0).any()
        s = recipe.smooth(site.name)
        if site.name.endswith("ff.net.2"):  # no linear producer: not smoothed by default
            assert torch.equal(s, torch.ones_like(s)) and site.alpha is None
        else:
            assert site.alpha == 0.5 and not torch.allclose(s, torch.ones_like(s))


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
