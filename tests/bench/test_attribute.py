"""``ditq bench attribute``: the CLI writes its files; the attribution finds a damaged site and splits W from A."""

import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F

from ditq.bench.attribute import AttributeConfig, attribute, quantizer_io, site_kind, top_share
from ditq.errors import DitqError

SMALL = AttributeConfig(steps=4, images=1, top_sites=1, progress=False)


def test_cli_writes_json_markdown_and_plot_on_the_tiny_model(tmp_path, capsys):
    from ditq._deps import has_module
    from ditq.cli.main import main

    out = tmp_path / "attr"
    assert main(["-q", "bench", "attribute", "--model", "tiny", "--groups", "2", "--calib-steps", "4",
                 "--calib-samples", "2", "--steps", "4", "--images", "1", "--top", "2", "-o", str(out)]) == 0
    assert "worst site transformer_blocks." in capsys.readouterr().out
    body = json.loads((out / "attribution.json").read_text())
    assert len(body["timesteps"]) == len(body["step_groups"]) == 4
    assert {k["name"] for k in body["kinds"]} == {"qkv", "out-proj", "fc1", "fc2"}
    assert [b["name"] for b in sorted(body["blocks"], key=lambda b: b["name"])] == [
        "transformer_blocks.0", "transformer_blocks.1"]
    assert len(body["sites"]) == 8 and len(body["concentration"]) == 2
    for s in body["sites"]:
        assert {"only_db", "share", "weight_db", "act_db", "loo_gain_db", "weight_share", "groups"} <= set(s)
        assert len(s["only_db_per_step"]) == 4
        # one site alone is worse than nothing quantized, and better than every site quantized
        assert body["total"]["all"]["sqnr_db"] <= s["only_db"] + 1e-6 < body["total"]["none"]["sqnr_db"]
    assert [s["only_noise_ratio"] for s in body["sites"]] == sorted(
        (s["only_noise_ratio"] for s in body["sites"]), reverse=True)
    assert abs(sum(s["share"] for s in body["sites"]) - 1) < 1e-3
    assert body["total"]["none"]["sqnr_db"] > 100  # nothing quantized: the exact fold, float rounding only
    assert set(body["total"]["all"]["groups"]) == {"0", "1"} and len(body["total"]["all"]["per_step_db"]) == 4
    md = (out / "attribution.md").read_text()
    assert md.splitlines()[3].startswith("ditq bench attribute --model tiny --method htg --w-bits 8 --groups 2")
    assert md.splitlines()[3].endswith(f" -o {out}")
    assert "| fc2 |" in md and "## Tokens and channels" in md and "Worst timesteps" in md
    assert (out / "attribution.png").exists() == has_module("matplotlib")


def test_a_damaged_site_tops_the_ranking_and_lands_on_the_right_side_of_the_split(tiny_model, tiny_recipe):
    act_site, w_site = "transformer_blocks.0.attn1.qkv", "transformer_blocks.0.ff.net.0.proj"
    clean = attribute(tiny_model, tiny_recipe, SMALL)
    assert clean["sites"][0]["name"] not in (act_site, w_site)  # else the damage would prove nothing
    tensors = dict(tiny_recipe.tensors)
    for g in tiny_recipe.groups:  # an input scale 1000x too small: the activations saturate
        tensors[f"g{g.group_id}/{act_site}.act_scale"] = tensors[f"g{g.group_id}/{act_site}.act_scale"] * 1e-3
    lin = f"{w_site}"  # fc1's only Linear: weights on a grid 30x too coarse
    tensors[f"{lin}.w_scale"] = tensors[f"{lin}.w_scale"] * 30
    damaged = attribute(tiny_model, dataclasses.replace(tiny_recipe, tensors=tensors), SMALL)
    ranked = {s["name"]: s for s in damaged["sites"]}
    assert {s["name"] for s in damaged["sites"][:2]} == {act_site, w_site}
    assert ranked[act_site]["weight_share"] < 0.05 < 0.95 < ranked[w_site]["weight_share"]
    assert ranked[act_site]["only_db"] < clean["total"]["all"]["sqnr_db"] - 10
    assert max(damaged["sites"], key=lambda s: s["loo_gain_db"])["name"] in (act_site, w_site)
    assert {k["name"] for k in damaged["kinds"][:2]} == {"qkv", "fc1"}
    assert damaged["blocks"][0]["name"] == "transformer_blocks.0"
    conc = damaged["concentration"][0]
    assert conc["site"] == damaged["sites"][0]["name"] and 0 < conc["top_tokens_error_share"] <= 1


def test_quantizer_io_is_the_qlinear_input_quantizer(tiny_model, tiny_recipe):
    from ditq.core.qlinear import QLinear
    from ditq.runtime.backends.fake_quant import group_denoiser

    den = group_denoiser(tiny_model, tiny_recipe, 1)
    fc2 = den.m.get_submodule("transformer_blocks.1.ff.net.2")  # explicit site: a pre-affine before the quantizer
    assert isinstance(fc2, QLinear) and fc2.pre is not None and fc2.act_scale is not None
    x = torch.randn(2, 5, fc2.weight.shape[1]) * 3
    xs, xq = quantizer_io(fc2, x)
    assert not torch.equal(xs, xq)
    torch.testing.assert_close(F.linear(xq, fc2.weight, fc2.bias), fc2(x))


def test_x0_target_recovers_the_clean_image_from_the_true_noise():
    from ditq.bench.attribute import _target_view

    alphas = torch.linspace(0.9999, 0.01, 1000, dtype=torch.float64)
    x0, eps, t = torch.randn(3, 1, 4, 4), torch.randn(3, 1, 4, 4), torch.tensor([0.0, 400.0, 999.0])
    a = alphas[t.long()].view(-1, 1, 1, 1).float()
    xt = a.sqrt() * x0 + (1 - a).sqrt() * eps
    torch.testing.assert_close(_target_view("x0", (xt, t, {}), alphas)(eps).float(), x0, atol=1e-4, rtol=1e-4)
    assert _target_view("eps", (xt, t, {}), None)(eps) is eps


def test_helpers_and_config_errors():
    assert site_kind("transformer_blocks.3.attn1.qkv") == "qkv" and site_kind("transformer_blocks.0.ff.net.2") == "fc2"
    share, k = top_share(torch.tensor([10.0] + [0.0] * 99))
    assert (share, k) == (1.0, 1)
    assert top_share(torch.ones(200))[0] == pytest.approx(0.01)
    with pytest.raises(DitqError, match="--steps"):
        AttributeConfig(steps=0)
    with pytest.raises(DitqError, match="--target"):
        AttributeConfig(target="v")


def test_recipe_and_method_flags_together_are_one_line_errors(tmp_path, capsys, tiny_recipe_dir):
    from ditq.cli.main import main

    assert main(["bench", "attribute", "--recipe", str(tiny_recipe_dir), "--method", "minmax",
                 "-o", str(tmp_path / "a")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("ditq bench: error: --recipe already fixes") and "\n" not in err
