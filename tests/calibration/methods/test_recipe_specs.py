"""Recipe format additions: per-Linear quantizer specs, W4A8 for the static methods, old recipes, the CLI."""

import copy
import json
import shutil

import onnx
import pytest
import torch
from method_checks import export_and_compare, int4_weight_dqs

from ditq.artifacts.recipe import LinearSpec, Recipe
from ditq.errors import DitqError


def test_old_recipes_without_specs_load_as_w8a8_static(tiny_recipe_dir, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(tiny_recipe_dir, old)
    body = json.loads((old / "recipe.json").read_text())
    body.pop("linears", None), body.pop("dynamic_activations", None)
    (old / "recipe.json").write_text(json.dumps(body))
    recipe = Recipe.load(old)
    assert recipe.linear_specs == {} and not recipe.dynamic_activations
    lin = recipe.sites[0].linears[0]
    assert recipe.linear_spec(lin) == LinearSpec(w_bits=8, w_block=0, act="static", a_bits=8)


def test_bad_specs_are_one_line_errors(tiny_recipe_dir, tmp_path):
    with pytest.raises(DitqError, match="bits"):
        LinearSpec(w_bits=3)
    with pytest.raises(DitqError, match="a_group"):
        LinearSpec(act="dynamic_group")
    bad = tmp_path / "bad"
    shutil.copytree(tiny_recipe_dir, bad)
    body = json.loads((bad / "recipe.json").read_text())
    lin = body["sites"][0]["linears"][0]
    body["linears"] = {lin: {"w_bits": 4, "w_block": 16, "act": "static", "a_bits": 8, "a_group": 0, "rotation": 0}}
    (bad / "recipe.json").write_text(json.dumps(body))
    with pytest.raises(DitqError, match="w_scale"):  # per-channel scales on disk, a block of 16 in the spec
        Recipe.load(bad)


def test_htg_w4a8_blocks_export_as_int4_block_dq(calibrated, tiny_model, tiny_reference, tmp_path):
    recipe = calibrated("htg", w_bits=4, w_block=32, groups=2)
    fc2 = recipe.sites[3].linears[0]
    spec = recipe.linear_spec(fc2)  # K = 128: four blocks (rotated or not, as the criterion chose)
    assert spec == LinearSpec(w_bits=4, w_block=32, rotation=spec.rotation)
    assert recipe.w_scale(fc2).shape == (32, 4)
    qkv = recipe.sites[0].linears[0]
    assert recipe.linear_spec(qkv).w_block == 0 and recipe.w_scale(qkv).dim() == 1  # K = 32: one block
    art = export_and_compare(tiny_model, recipe, tiny_reference, tmp_path)
    assert art.recipe["weight_formats"] == ["INT4/block32", "INT4/channel"] and not art.recipe["dynamic_activations"]
    dqs = {n.name: n for n in int4_weight_dqs(art)}
    assert len(dqs) == sum(len(s.linears) for s in recipe.sites)
    attrs = {a.name: a.i for a in dqs[f"{fc2}.weight_dq"].attribute}
    assert attrs == {"axis": 0, "block_size": 32}
    attrs = {a.name: a.i for a in dqs[f"{qkv}.weight_dq"].attribute}
    assert attrs == {"axis": 0, "block_size": 32}  # per channel INT4 = one block spanning K
    model = onnx.load(str(art.path(0)), load_external_data=False)
    shapes = {t.name: list(t.dims) for t in model.graph.initializer}
    assert shapes[f"{fc2}.w_scale"] == [4, 32] and shapes[f"{qkv}.w_scale"] == [1, 32]


def test_cli_calibrate_options_and_dynamic_export_note(capsys, tiny_model_dir, tiny_reference, tmp_path,
                                                       monkeypatch):
    from ditq.cli.main import main

    # the CLI exports the reference itself; hand it a copy of the session's (export_onnx externalizes it in place)
    monkeypatch.setattr("ditq.export.onnx_export.export_reference", lambda *a, **k: copy.deepcopy(tiny_reference))
    out = tmp_path / "recipe"
    assert main(["-q", "calibrate", str(tiny_model_dir), "-o", str(out), "--method", "qdit", "--w-bits", "4",
                 "--steps", "4", "--samples", "1", "--param", "population=3", "--param", "epochs=1"]) == 0
    assert "dynamic activations" in capsys.readouterr().out
    recipe = Recipe.load(out)
    assert recipe.params["population"] == 3 and recipe.w_bits == 4 and recipe.dynamic_activations
    assert json.loads((out / "manifest.json").read_text())["dynamic_activations"] is True
    assert main(["-q", "export", str(out), "-o", str(tmp_path / "onnx")]) == 0
    printed = capsys.readouterr().out
    if recipe.float_quantized_linears:  # some searched group is narrower than K: per token and channel group
        assert "cannot become TensorRT INT8 engines" in printed and "0 violations" in printed
    else:  # every group the whole K: per token, the constant-scale Q/DQ form
        assert "explicit-quantization form" in printed and "0 violations" in printed
    assert "no INT4 x INT8 GEMM" in printed and "--target tensorrt" in printed
    manifest = json.loads((tmp_path / "onnx" / "manifest.json").read_text())
    assert manifest["recipe"]["dynamic_activations"] is True
    code = main(["calibrate", str(tiny_model_dir), "-o", str(tmp_path / "x"), "--method", "htg", "--alpha", "0.5"])
    assert code == 1 and "--alpha" in capsys.readouterr().err


def test_ptq4dit_uses_its_own_calibration_defaults(tiny_model_dir, tmp_path, monkeypatch):
    import ditq.calibration.calibrate as cal
    from ditq.cli.main import main

    seen = {}

    def fake(model, method, config, forward_loop=None):
        seen.update(steps=config.steps, samples=config.samples)
        raise DitqError("stop here")

    monkeypatch.setattr(cal, "calibrate", fake)
    assert main(["calibrate", str(tiny_model_dir), "-o", str(tmp_path / "r"), "--method", "ptq4dit"]) == 1
    assert seen == {"steps": 25, "samples": 32}
    assert main(["calibrate", str(tiny_model_dir), "-o", str(tmp_path / "r"), "--method", "htg"]) == 1
    assert seen == {"steps": 100, "samples": 16}


def test_output_aware_weight_clip_search_minimises_the_output_error():
    from ditq.core.quantizers import CLIP_GRID, fake_quant_weight, scale_from_amax, weight_scales

    gen = torch.Generator().manual_seed(0)
    w = torch.randn(16, 64, generator=gen)
    x = torch.randn(256, 64, generator=gen) * torch.linspace(0.1, 5.0, 64)  # uneven input channels
    h = x.T @ x / x.shape[0]

    def out_err(scales):  # e H e^T per output row
        e = fake_quant_weight(w, scales, 4) - w
        return (e @ h * e).sum(1)

    aware = weight_scales(w, 4, input_power=h)
    for ratio in CLIP_GRID:  # no grid point does better on any output row
        assert torch.all(out_err(aware) <= out_err(scale_from_amax(w.abs().amax(1) * ratio, 4)) + 1e-6)
    assert out_err(aware).sum() <= out_err(weight_scales(w, 4)).sum()  # vs the plain weight-MSE choice
    assert weight_scales(w, 4, block=32, input_power=h).shape == (16, 2)
