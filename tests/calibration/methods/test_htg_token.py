"""``htg:act="token"``: HTG's groups, shifts, smoothing and weights with per-token activations, scored that way,
exported in TensorRT's explicit form and equal to the torch reference on ONNX Runtime."""

from __future__ import annotations

import pytest
import torch
from method_checks import assert_fold_exact, assert_round_trip, export_and_compare

from ditq.calibration.methods.htg import HTGConfig
from ditq.errors import DitqError


def test_htg_token_recipe_is_per_token_everywhere_and_exports(calibrated, tiny_model, tiny_reference, tmp_path):
    recipe = calibrated("htg", groups=2, act="token")
    assert recipe.num_groups == 2 and recipe.calibration["method"]["act"] == "token"
    specs = [recipe.linear_spec(lin) for s in recipe.sites for lin in s.linears]
    assert all(sp.act == "dynamic_token" and sp.w_bits == 8 for sp in specs)
    assert recipe.dynamic_activations and recipe.float_quantized_linears == ()
    assert not any(k.endswith(".act_scale") for k in recipe.tensors)  # no static scale to store
    assert any(bool(recipe.shift(s.name, 0).any()) for s in recipe.sites)  # HTG's shifts are still folded
    assert_fold_exact(tiny_model, recipe)
    assert_round_trip(recipe, tmp_path / "rt")
    export_and_compare(tiny_model, recipe, tiny_reference, tmp_path / "x")


@torch.no_grad()
def test_htg_token_scores_candidates_per_token(calibrated, tiny_model):
    """Its criterion quantizes per token: the scorer it uses ignores the (placeholder) static scales."""
    from ditq.calibration.methods.site_probe import GroupedSiteLinear

    lin = torch.nn.Linear(16, 8)
    x = torch.randn(5, 16) * torch.linspace(0.1, 10, 5)[:, None]  # token ranges 100x apart
    zero, ones = torch.zeros(1, 16), torch.ones(16)
    token = GroupedSiteLinear(lin, zero, ones, torch.tensor([1e3]), w_bits=8, a_bits=8, w_block=0, per_token=True)
    static = GroupedSiteLinear(lin, zero, ones, torch.tensor([1e3]), w_bits=8, a_bits=8, w_block=0)
    ref = lin(x)
    assert (token(x) - ref).abs().max() < 0.1 < (static(x) - ref).abs().max()  # scale 1e3 rounds all to zero


def test_htg_token_refuses_the_local_criterion_and_fp8():
    from ditq.calibration.methods.base import Context

    with pytest.raises(DitqError, match="act must be"):
        HTGConfig(act="group")
    ctx = Context(sites=[], stats={}, timesteps=[0], weights={}, num_train_timesteps=1000, w_bits=8, a_bits=8,
                  fmt="fp8_e4m3")
    with pytest.raises(DitqError, match="per token"):
        HTGConfig(act="token").solve(ctx)
    ctx.fmt = "int"
    with pytest.raises(DitqError, match="local criterion"):
        HTGConfig(act="token", alpha_criterion="local").solve(ctx)
