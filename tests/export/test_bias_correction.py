"""Per-group bias correction: the recipe carries minus each static Linear's mean output error per group, every
consumer folds it into that group's biases, and on the calibration trajectory it removes the mean error."""

import dataclasses
import json

import pytest
import torch

from ditq.artifacts.recipe import RECIPE_JSON, Recipe
from ditq.errors import DitqError
from ditq.runtime.backends import group_denoiser

CALIB = {"steps": 12, "samples": 4, "seed": 3}


@pytest.fixture(scope="module")
def recipes(tiny_model, tmp_path_factory):
    from ditq.calibration.calibrate import CalibConfig, calibrate
    from ditq.calibration.methods import method_config

    out = {}
    for case, name, params, fields in (("on", "htg", {"groups": 2}, {"bias_correction": True}),
                                       ("off", "htg", {"groups": 2}, {"bias_correction": False}),
                                       ("fp8", "minmax", {}, {"fmt": "fp8_e4m3", "bias_correction": True}),
                                       ("viditq", "viditq", {}, {"bias_correction": True})):
        recipe = calibrate(tiny_model, method_config(name, **params),
                           CalibConfig(progress=False, **CALIB, **fields))
        recipe.save(tmp_path_factory.mktemp("bc") / case)
        out[case] = recipe
    return out


def _static_linears(recipe):
    return [lin for s in recipe.sites for lin in s.linears if not recipe.linear_spec(lin).dynamic]


def test_recipe_carries_one_correction_per_group_and_static_linear(recipes):
    on, off = recipes["on"], recipes["off"]
    assert on.bias_correction and json.loads((on.root / RECIPE_JSON).read_text())["bias_correction"] is True
    for g in range(on.num_groups):
        corr = on.bias_corrections(g)
        assert set(corr) == set(_static_linears(on))
        assert all(v.shape == on.w_scale(k).shape[:1] and bool(v.abs().max() > 0) for k, v in corr.items())
    assert not off.bias_correction and "bias_correction" not in json.loads((off.root / RECIPE_JSON).read_text())
    assert off.bias_corrections(0) == {}
    assert recipes["fp8"].bias_correction  # FP8's grid has a mean error too
    viditq = recipes["viditq"]  # dynamic activations: nothing to correct with a static mean
    assert not viditq.bias_correction and not any(k.endswith(".bias_correction") for k in viditq.tensors)
    loaded = Recipe.load(on.root)
    assert loaded.body() == on.body() and all(torch.equal(loaded.tensors[k], v) for k, v in on.tensors.items())


def test_correction_changes_nothing_else(recipes):
    """Same seed with and without: the same scales, shifts and codes; the corrections are the only addition."""
    on, off = recipes["on"], recipes["off"]
    extra = {k for k in on.tensors if k.endswith(".bias_correction")}
    assert set(on.tensors) - extra == set(off.tensors)
    assert all(torch.equal(off.tensors[k], on.tensors[k]) for k in off.tensors)


def test_check_refuses_missing_stray_or_misshapen_corrections(recipes, tmp_path):
    on, off = recipes["on"], recipes["off"]
    key = next(k for k in on.tensors if k.endswith(".bias_correction"))
    cases = {
        "missing": (on, {k: v for k, v in on.tensors.items() if k != key}, "lacks"),
        "stray": (off, {**off.tensors, key: on.tensors[key]}, "bias corrections"),
        "shape": (on, {**on.tensors, key: torch.zeros(3)}, "one per output"),
    }
    for base, tensors, match in cases.values():
        with pytest.raises(DitqError, match=match):
            dataclasses.replace(base, tensors=tensors).check()


@torch.no_grad()
def test_folded_biases_differ_by_the_correction_only(recipes, tiny_model):
    on, off = recipes["on"], recipes["off"]
    for g in range(on.num_groups):
        m_on = dict(group_denoiser(tiny_model, on, g).m.named_modules())
        m_off = dict(group_denoiser(tiny_model, off, g).m.named_modules())
        for lin, corr in on.bias_corrections(g).items():
            torch.testing.assert_close(m_on[lin].bias - m_off[lin].bias, corr.to(m_on[lin].bias.dtype),
                                       rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(m_on[lin].weight, m_off[lin].weight, rtol=0, atol=0)
        # without quantizers the fold stays exact: no correction
        fp_on = dict(group_denoiser(tiny_model, on, g, quantize=False).m.named_modules())
        fp_off = dict(group_denoiser(tiny_model, off, g, quantize=False).m.named_modules())
        assert all(torch.equal(fp_on[lin].bias, fp_off[lin].bias) for lin in on.bias_corrections(g))


def _group_inputs(model, recipe, group_id, transformer, linears):
    """Every input of ``linears`` (name -> module of ``transformer``) in the calibration trajectory's calls that
    fall in group ``group_id``."""
    from ditq.calibration.calibrate import CalibConfig, sampler_forward_loop

    inputs: dict[str, list[torch.Tensor]] = {lin: [] for lin in linears}
    now = {"t": 0.0}

    def on_call(_m, _a, kw):
        now["t"] = float(kw["timestep"].flatten()[0])

    def on_input(lin):
        return lambda _m, a: inputs[lin].append(a[0]) if recipe.group_of(now["t"]) == group_id else None

    hooks = [transformer.register_forward_pre_hook(on_call, with_kwargs=True)]
    hooks += [mod.register_forward_pre_hook(on_input(lin)) for lin, mod in linears.items()]
    try:
        sampler_forward_loop(model, CalibConfig(progress=False, **CALIB))(transformer)
    finally:
        for h in hooks:
            h.remove()
    return inputs


@torch.no_grad()
def test_correction_removes_the_mean_output_error_on_the_calibration_trajectory(recipes, tiny_model):
    """Each static Linear's output error, averaged over the tokens of the calibration trajectory's group-g calls,
    is much smaller with the correction than without (it was estimated on a sample of those very rows)."""
    on, off = recipes["on"], recipes["off"]
    for g in range(on.num_groups):
        fp = group_denoiser(tiny_model, on, g, quantize=False)
        fp_mods = dict(fp.m.named_modules())
        q_on = dict(group_denoiser(tiny_model, on, g).m.named_modules())
        q_off = dict(group_denoiser(tiny_model, off, g).m.named_modules())
        lins = _static_linears(on)
        inputs = _group_inputs(tiny_model, on, g, fp.m, {lin: fp_mods[lin] for lin in lins})
        before = after = 0.0
        for lin in lins:
            x = torch.cat([i.reshape(-1, i.shape[-1]) for i in inputs[lin]])
            ref = fp_mods[lin](x)
            after += float((q_on[lin](x) - ref).mean(0).square().sum())
            before += float((q_off[lin](x) - ref).mean(0).square().sum())
        # a sample of the rows (the reservoir) estimated it: what is left is mostly that estimate's noise
        assert after < 0.5 * before, (g, after, before)
