"""GPTQ weight rounding end to end: the recipe carries the codes, and every consumer (fake-quant, torch-int8, the
ONNX QDQ export) computes with them; recipes without codes are read as round to nearest, as before."""

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch

from ditq.artifacts.recipe import RECIPE_JSON, Recipe
from ditq.core.qlinear import QLinear
from ditq.core.quantizers import dequantize_weight, quantize_weight, rotate_weight
from ditq.errors import DitqError
from ditq.runtime.backends import group_denoiser

CASES = {  # name: (method, params, CalibConfig fields)
    "htg-w4-block32": ("htg", {"groups": 2}, {"w_bits": 4, "w_block": 32}),
    "smoothquant-w8": ("smoothquant", {}, {}),
    "viditq-rotated": ("viditq", {}, {}),  # online Hadamard: the codes live in the rotated domain
    "minmax-fp8": ("minmax", {}, {"fmt": "fp8_e4m3"}),
}


@pytest.fixture(scope="module")
def gptq_recipes(tiny_model, tmp_path_factory):
    from ditq.calibration.calibrate import CalibConfig, calibrate
    from ditq.calibration.methods import method_config

    out = {}
    for case, (name, params, fields) in CASES.items():
        recipe = calibrate(tiny_model, method_config(name, **params),
                           CalibConfig(steps=12, samples=4, progress=False, weight_rounding="gptq", **fields))
        recipe.save(tmp_path_factory.mktemp("gptq") / case)
        out[case] = recipe
    return out


def _linears(recipe):
    return [lin for s in recipe.sites for lin in s.linears]




def test_gptq_recipe_round_trips_with_its_codes(gptq_recipes):
    for case, recipe in gptq_recipes.items():
        assert recipe.weight_rounding == "gptq" and recipe.calibration["weight_rounding"] == "gptq"
        loaded = Recipe.load(recipe.root)
        assert loaded.body() == recipe.body() and loaded.tensors.keys() == recipe.tensors.keys(), case
        assert all(torch.equal(loaded.tensors[k], v) for k, v in recipe.tensors.items()), case
        assert json.loads((recipe.root / RECIPE_JSON).read_text())["weight_rounding"] == "gptq"
        for lin in _linears(recipe):
            codes = loaded.tensors[f"{lin}.w_codes"]
            assert codes.dtype == (torch.float16 if case == "minmax-fp8" else torch.int8)


@torch.no_grad()
def test_every_consumer_computes_with_the_stored_codes(gptq_recipes, tiny_model):
    """fake-quant's weights are codes x scales, not the nearest rounding of the folded weight (they differ)."""
    from ditq.runtime.backends.fake_quant import folded_transformer

    for case, recipe in gptq_recipes.items():
        transformer, _, _ = folded_transformer(tiny_model, recipe, 0)
        folded = dict(transformer.named_modules())
        modules = dict(group_denoiser(tiny_model, recipe, 0).m.named_modules())
        differs = 0
        for lin in _linears(recipe):
            spec, scale = recipe.linear_spec(lin), recipe.w_scale(lin)
            q = modules[lin]
            assert isinstance(q, QLinear)
            stored = recipe.tensors[f"{lin}.w_codes"].float()
            torch.testing.assert_close(q.weight, dequantize_weight(stored, scale), rtol=0, atol=0)
            nearest = quantize_weight(rotate_weight(folded[lin].weight, spec.rotation), scale, spec.w_bits, spec.fmt)
            differs += not torch.equal(stored, nearest)
        assert differs, f"{case}: GPTQ chose the nearest codes for every Linear"


@torch.no_grad()
def test_torch_int8_uses_the_stored_codes(gptq_recipes, tiny_model):
    from ditq.runtime.backends.torch_int8 import Int8Linear, int8_group_denoiser

    recipe = gptq_recipes["smoothquant-w8"]
    modules = dict(int8_group_denoiser(tiny_model, recipe, 0).m.named_modules())
    for lin in _linears(recipe):
        assert isinstance(modules[lin], Int8Linear)
        assert torch.equal(modules[lin].weight_int8, recipe.tensors[f"{lin}.w_codes"])


@pytest.mark.parametrize("case", list(CASES))
@torch.no_grad()
def test_onnxruntime_qdq_matches_fake_quant_with_gptq_codes(case, gptq_recipes, tiny_model, feeds, tmp_path):
    import onnxruntime as ort

    from ditq.export.onnx_export import export_onnx
    from ditq.runtime.backends import onnx_feeds

    recipe = gptq_recipes[case]
    art = export_onnx(tiny_model, recipe, tmp_path / "onnx", recipe_dir=recipe.root, progress=False)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    for g in art.groups:
        sess = ort.InferenceSession(str(art.root / g.file), opts, providers=["CPUExecutionProvider"])
        fq = group_denoiser(tiny_model, recipe, g.group_id)
        nearest = group_denoiser(tiny_model, dataclasses.replace(recipe, weight_rounding="nearest", tensors={
            k: v for k, v in recipe.tensors.items() if not k.endswith(".w_codes")}), g.group_id)
        for x, t, y in feeds([sum(g.interval) / 2]):
            ref = fq(x, t, y).numpy()
            out = sess.run(None, onnx_feeds(x, t, y))[0]
            gap = np.linalg.norm(out - ref) / np.linalg.norm(ref)
            assert gap < 2e-3, (case, g.group_id, gap)
            # the agreement is with the GPTQ weights, not the nearest ones
            assert np.linalg.norm(out - nearest(x, t, y).numpy()) / np.linalg.norm(ref) > 5 * gap


@torch.no_grad()
def test_a_recipe_without_codes_is_round_to_nearest(gptq_recipes, tiny_model, tmp_path):
    """Recipes written before GPTQ (no weight_rounding, no w_codes) load, and every consumer rounds to nearest."""
    from safetensors.torch import load_file, save_file

    from ditq.artifacts.recipe import SCALES

    old = tmp_path / "old"
    shutil.copytree(gptq_recipes["smoothquant-w8"].root, old)
    body = json.loads((old / RECIPE_JSON).read_text())
    del body["weight_rounding"], body["calibration"]["weight_rounding"]
    (old / RECIPE_JSON).write_text(json.dumps(body))
    save_file({k: v for k, v in load_file(str(old / SCALES)).items() if not k.endswith(".w_codes")}, str(old / SCALES))
    recipe = Recipe.load(old)
    assert recipe.weight_rounding == "nearest"
    from ditq.runtime.backends.fake_quant import folded_transformer

    folded = dict(folded_transformer(tiny_model, recipe, 0)[0].named_modules())
    modules = dict(group_denoiser(tiny_model, recipe, 0).m.named_modules())
    for lin in _linears(recipe):
        w, scale = folded[lin].weight, recipe.w_scale(lin)
        torch.testing.assert_close(modules[lin].weight, dequantize_weight(quantize_weight(w, scale, 8), scale),
                                   rtol=0, atol=0)


def test_check_refuses_codes_that_do_not_fit_the_recipe(gptq_recipes):
    recipe = gptq_recipes["htg-w4-block32"]
    lin = _linears(recipe)[0]
    without = {k: v for k, v in recipe.tensors.items() if k != f"{lin}.w_codes"}
    with pytest.raises(DitqError, match="w_codes"):
        dataclasses.replace(recipe, tensors=without).check()  # says gptq, a Linear's codes are missing
    with pytest.raises(DitqError, match="weight_rounding 'nearest'"):
        dataclasses.replace(recipe, weight_rounding="nearest").check()
    wide = dict(recipe.tensors)
    wide[f"{lin}.w_codes"] = wide[f"{lin}.w_codes"].clone()
    wide[f"{lin}.w_codes"][0, 0] = 9  # not an INT4 code
    with pytest.raises(DitqError, match="4-bit codes"):
        dataclasses.replace(recipe, tensors=wide).check()
    with pytest.raises(DitqError, match="not one of"):
        dataclasses.replace(recipe, weight_rounding="adaround").check()
