"""PixArt (adaLN-single + caption cross-attention) through calibrate -> fold -> export -> lint -> validate -> sample,
on a tiny random PixArt with a fixed random caption table."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from ditq.errors import DitqError


def test_sites_cover_self_and_cross_attention_and_the_feed_forward(pixart_model):
    from ditq.models.loading import quant_sites

    sites = {s.name: s for s in quant_sites(pixart_model.transformer)}
    b = "transformer_blocks.0"
    assert sites[f"{b}.attn1.qkv"].fold == "table" and sites[f"{b}.attn1.qkv"].producer == f"{b}.scale_shift_table"
    assert (sites[f"{b}.ff.net.0.proj"].shift_chunk, sites[f"{b}.ff.net.0.proj"].scale_chunk) == (3, 4)
    assert sites[f"{b}.attn2.kv"].linears == (f"{b}.attn2.to_k", f"{b}.attn2.to_v")
    assert sites[f"{b}.attn2.to_q"].fold == sites[f"{b}.attn2.kv"].fold == sites[f"{b}.ff.net.2"].fold == "explicit"
    assert sites[f"{b}.attn2.to_out.0"].producer == f"{b}.attn2.to_v"
    assert len(sites) == 2 * 7
    linears = {lin for s in sites.values() for lin in s.linears}
    assert not any("adaln_single" in lin or "caption_projection" in lin or "proj_out" in lin for lin in linears)


def test_folding_is_exact_in_every_group(pixart_model, pixart_recipe_dir):
    from ditq.artifacts.recipe import Recipe
    from ditq.runtime.backends import group_denoiser

    recipe = Recipe.load(pixart_recipe_dir)
    den = pixart_model.denoiser()
    gen = torch.Generator().manual_seed(0)
    cond = pixart_model.cond([0, 3, 5])
    for g in recipe.groups:
        folded = group_denoiser(pixart_model, recipe, g.group_id, quantize=False)
        for t in (g.interval[0], g.interval[1]):
            x, tt = torch.randn(3, 4, 8, 8, generator=gen), torch.full((3,), float(t))
            with torch.no_grad():
                ref = den(x, tt, cond)
                assert float((folded(x, tt, cond) - ref).abs().max() / ref.abs().max()) < 1e-5


def test_caption_key_value_inputs_get_an_independent_dither_in_each_group(pixart_model, pixart_recipe_dir):
    """The caption K/V input is the same at every timestep: HTG gives each group its own rounding of it (a shift of
    at most half a step per channel, the scale widened by 128/127); every other site keeps its per-group ranges."""
    from ditq.artifacts.recipe import Recipe
    from ditq.calibration.calibrate import CalibConfig, calibrate
    from ditq.calibration.methods import method_config
    from ditq.core.quantizers import rotate

    recipe = Recipe.load(pixart_recipe_dir)
    dithered = recipe.calibration["method"]["dithered_sites"]
    assert sorted(dithered) == sorted(s.name for s in recipe.sites if s.name.endswith("attn2.kv"))
    t = recipe.tensors
    cal = recipe.calibration  # the fixture's calibration, repeated without the dither
    plain = calibrate(pixart_model, method_config("htg", groups=3, invariant_dither=False),
                      CalibConfig(steps=cal["steps"], samples=cal["samples"], progress=False))
    assert "dithered_sites" not in plain.calibration["method"]
    for name in dithered:
        rot = recipe.linear_spec(next(s for s in recipe.sites if s.name == name).linears[0]).rotation
        smooth = t[f"{name}.smooth"]
        steps = [float(t[f"g{g.group_id}/{name}.act_scale"]) for g in recipe.groups]
        assert steps == [pytest.approx(float(plain.tensors[f"g{g.group_id}/{name}.act_scale"]) * 128 / 127)
                         for g in recipe.groups]
        # the same input, the same range in every group; in the quantizer's coordinates the groups' shifts differ
        # by the difference of two dithers in [-1/2, 1/2) steps (mean magnitude 1/3)
        assert len(set(steps)) == 1
        for g in recipe.groups[1:]:
            diff = rotate(((t[f"g{g.group_id}/{name}.shift"] - t[f"g0/{name}.shift"]) / smooth)[None].double(),
                          rot)[0] / steps[0]
            assert float(diff.abs().max()) < 1.0 and 0.2 < float(diff.abs().mean()) < 0.5


def test_a_class_conditioned_dit_has_no_timestep_invariant_site(tiny_recipe):
    assert tiny_recipe.num_groups > 1 and "dithered_sites" not in tiny_recipe.calibration["method"]


def test_table_sites_fold_the_shift_into_the_table_and_scale_with_a_mul(pixart_model, pixart_recipe_dir):
    from ditq.artifacts.recipe import Recipe
    from ditq.core.fold import fold_state
    from ditq.models.loading import quant_sites

    recipe = Recipe.load(pixart_recipe_dir)
    sites = quant_sites(pixart_model.transformer)
    state = pixart_model.transformer.state_dict()
    site = next(s for s in sites if s.name.endswith("0.attn1.qkv"))
    z = recipe.shift(site.name, 0)
    assert z.abs().sum() > 0
    folded, pre = fold_state(state, sites, {s.name: recipe.shift(s.name, 0) for s in sites},
                             {s.name: recipe.smooth(s.name) for s in sites})
    table = site.producer
    torch.testing.assert_close(folded[table][0], state[table][0] - z)
    rows = [1, 2, 4, 5]  # scales and gates: a scale's time-dependent part is shared, so it is never folded here
    torch.testing.assert_close(folded[table][rows], state[table][rows], rtol=0, atol=0)
    if (recipe.smooth(site.name) != 1).any():
        shift, inv = pre[site.name]
        assert not shift.any() and torch.allclose(inv, 1 / recipe.smooth(site.name))
    assert folded["adaln_single.linear.weight"] is state["adaln_single.linear.weight"]  # shared: never folded


def test_export_lint_and_onnxruntime_match_the_fake_quant_reference(pixart_model, pixart_recipe_dir, pixart_onnx):
    from ditq.artifacts.lint import lint_dir
    from ditq.artifacts.recipe import Recipe
    from ditq.runtime.backends import onnxruntime_backend, torch_backend

    assert {k: v for k, v in lint_dir(pixart_onnx.root).items() if v} == {}
    proto = onnx.load(str(pixart_onnx.path(0)), load_external_data=False)
    assert [i.name for i in proto.graph.input] == ["hidden_states", "timestep", "encoder_hidden_states",
                                                   "encoder_attention_mask"]
    ops = [n.op_type for n in proto.graph.node]
    assert "Squeeze" not in ops  # the no-op squeeze(1) is gone (DESIGN §6)
    assert ops.count("QuantizeLinear") == 2 * (3 + 1 + 1 + 2 + 1 + 1 + 1)
    assert (pixart_onnx.root / "captions.safetensors").is_file()
    recipe = Recipe.load(pixart_recipe_dir)
    ort, fq = onnxruntime_backend(pixart_onnx, fuse=False), torch_backend(pixart_model, recipe)
    gen = torch.Generator().manual_seed(3)
    # the caption length is a dynamic axis: a shorter caption than the table's works too
    cond = {k: v[:, :7] for k, v in pixart_model.cond([1, 2, 4, 5]).items()}
    for g in recipe.groups:
        x, t = torch.randn(4, 4, 8, 8, generator=gen), torch.full((4,), sum(g.interval) / 2)
        ref = fq(x, t, cond)
        assert float((ort(x, t, cond) - ref).norm() / ref.norm()) < 1e-4


def test_the_shift_is_grafted_into_each_groups_graph(pixart_onnx, pixart_recipe_dir):
    """scale_shift_table[None] is constant-folded by the exporter into an anonymous initializer: the group graphs
    must carry their own folded tables there (else every group would run the reference table)."""
    def tables(path):
        proto = onnx.load(str(path))
        return {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer
                if list(t.dims)[-2:] == [6, 32]}

    ref, g0, g2 = tables(pixart_onnx.path(None)), tables(pixart_onnx.path(0)), tables(pixart_onnx.path(2))
    assert ref.keys() == g0.keys() == g2.keys() and len(ref) == 2
    name = sorted(ref)[0]
    assert not np.array_equal(ref[name], g0[name]) and not np.array_equal(g0[name], g2[name])


def test_validate_and_grouped_sampling(pixart_model, pixart_onnx, pixart_recipe_dir, tmp_path):
    from ditq.artifacts.recipe import Recipe
    from ditq.core.sampler import make_scheduler, sample
    from ditq.runtime.backends import open_backend
    from ditq.validation.run import ValidateConfig, validate

    report = validate(pixart_onnx, pixart_model, Recipe.load(pixart_recipe_dir), tmp_path / "val",
                      ValidateConfig(steps=20, samples=2, feeds_per_group=1))
    assert report["passed"], report
    for g in report["groups"]:
        assert g["metrics"]["onnxrt-qdq"]["sqnr_db"] > 25
        assert abs(g["metrics"]["onnxrt-qdq"]["sqnr_db"] - g["metrics"]["torch-fakequant"]["sqnr_db"]) < 0.5
    backend, info = open_backend(pixart_onnx.root, "onnxruntime", fuse=False)
    cond = info["conditioning"]
    images = sample(backend, make_scheduler(info["scheduler_config"]), cond.cond([0, 4]), steps=12, cfg_scale=4.5,
                    null_cond=cond.null(), sample_shape=tuple(info["sample_shape"]))
    assert images.shape == (2, 4, 8, 8) and torch.isfinite(images).all()
    assert all(c > 0 for c in backend.calls)
    with pytest.raises(DitqError, match="caption indices"):
        cond.cond([6])


def test_a_pixart_dir_without_captions_is_a_clear_error(tmp_path, pixart_dir):
    import shutil

    from ditq.models.loading import load_model

    shutil.copytree(pixart_dir, tmp_path / "m")
    (tmp_path / "m" / "captions.safetensors").unlink()
    model = load_model(tmp_path / "m")
    with pytest.raises(DitqError, match="caption table"):
        model.cond([0])


def test_cli_calibrate_export_validate_sample(pixart_dir, tmp_path, capsys):
    from ditq.cli.main import main

    assert main(["calibrate", str(pixart_dir), "-o", str(tmp_path / "r"), "--steps", "10", "--samples", "3",
                 "--groups", "2"]) == 0
    assert main(["export", str(tmp_path / "r"), "-o", str(tmp_path / "o")]) == 0
    assert main(["validate", str(tmp_path / "o"), "--steps", "10"]) == 0
    assert main(["sample", str(tmp_path / "o"), "-o", str(tmp_path / "s.png"), "--classes", "0,5", "--steps", "6",
                 "--exact-qdq"]) == 0
    assert main(["sample", str(tmp_path / "o"), "-o", str(tmp_path / "s9.png"), "--classes", "9", "--steps", "6"]) == 1
    assert "caption-table rows in [0, 5]" in capsys.readouterr().err


def test_caption_table_from_a_pipelines_text_encoder(tmp_path):
    """save_pipeline_captions calls the pipeline's encode_prompt with the negative prompt "" (a stand-in encoder:
    no T5 offline) and writes a table load_model reads back."""
    from ditq.artifacts.captions import load_caption_table
    from ditq.models.conditioning import save_pipeline_captions

    class Pipe:
        def encode_prompt(self, prompts, do_classifier_free_guidance, negative_prompt, **kw):
            assert do_classifier_free_guidance and negative_prompt == ""
            n = len(prompts)
            mask = torch.zeros(n, 5)
            mask[:, :2] = 1
            return torch.randn(n, 5, 8), mask, torch.zeros(n, 5, 8), torch.ones(n, 5)

    table = load_caption_table(save_pipeline_captions(Pipe(), ["a", "b", "c"], tmp_path / "c.safetensors"))
    assert table.num == 3 and table.null()["encoder_hidden_states"].shape == (1, 5, 8)
    with pytest.raises(DitqError, match="at least one"):
        save_pipeline_captions(Pipe(), [], tmp_path / "d.safetensors")
