"""Static rotation: a block-Hadamard ``x @ R`` before HTG's (or SmoothQuant's) static per-tensor quantizer."""

from __future__ import annotations

import onnx
import pytest
import torch
from method_checks import assert_fold_exact, assert_round_trip, export_and_compare, htg_context

from ditq.core.quantizers import largest_pow2_divisor, rotation_matrix
from ditq.errors import DitqError

BLOCK = 32


def _k(recipe, site) -> int:
    return recipe.smooth(site.name).numel()


def test_htg_rotation_recipe_is_static_rotated_exact_and_round_trips(calibrated, tiny_model, tmp_path):
    rec = calibrated("htg", rotation=BLOCK, rotation_choice=False)
    assert not rec.dynamic_activations
    for site in rec.sites:
        for lin in site.linears:
            spec = rec.linear_spec(lin)
            assert spec.act == "static" and spec.rotation == min(BLOCK, largest_pow2_divisor(_k(rec, site)))
    assert rec.calibration["method"]["rotated_sites"] == {s.name: BLOCK for s in rec.sites}
    assert_fold_exact(tiny_model, rec)  # shift/smooth folded, rotation online: the FP model is unchanged
    assert_round_trip(rec, tmp_path / "rt")


def test_htg_rotation_act_scales_are_those_of_the_rotated_input(tiny_model):
    """The static scale must cover ``((x - z) / s) @ R``, not the unrotated input: with the clip search off the
    scale is the rotated reservoir's amax / 127."""
    from ditq.calibration.calibrate import CalibConfig
    from ditq.calibration.methods.base import act_scales_for
    from ditq.calibration.methods.smoothquant import one_group

    ctx = htg_context(tiny_model, CalibConfig(steps=4, samples=2, progress=False), groups=1, alpha_criterion="local",
                      rotation=BLOCK)
    site = next(s for s in ctx.sites if s.name.endswith("ff.net.2"))  # fc2: 128 channels, post-GELU outliers
    grouping = one_group(ctx)
    st = ctx.stats[site.name]
    k = st.ch_max.shape[1]
    z, s = torch.zeros(1, k), torch.ones(k)
    rotated, _ = act_scales_for(ctx, site, grouping, z, s, search=False, rotation=BLOCK)
    plain, _ = act_scales_for(ctx, site, grouping, z, s, search=False)
    x = st.reservoir.reshape(-1, k).float() @ rotation_matrix(k, BLOCK).float()
    assert float(rotated[0]) == pytest.approx(float(x.abs().amax()) / 127, rel=1e-5)
    assert float(rotated[0]) != pytest.approx(float(plain[0]), rel=1e-3)


def test_htg_rotation_signs_ride_on_the_smoothing_vector(calibrated, tiny_model):
    """Rotated sites take random channel signs (a randomized Hadamard) through their smoothing vector, so the graph
    keeps the plain block-Hadamard; ``rotation_signs=False`` gives the plain rotation (positive smoothing)."""
    from ditq.core.quantizers import rotation_signs

    rec = calibrated("htg", rotation=BLOCK, rotation_choice=False)
    plain = calibrated("htg", rotation=BLOCK, rotation_choice=False, rotation_signs=False)
    for site in rec.sites:
        k = _k(rec, site)
        assert torch.equal(rec.smooth(site.name).sign(), rotation_signs(k)), site.name
        assert bool((plain.smooth(site.name) > 0).all()), site.name
    assert_fold_exact(tiny_model, rec)


def test_rotation_signs_spread_the_common_offset_a_plain_hadamard_piles_into_one_coordinate(tiny_model):
    """fc2's input, shifted by its mid-range, sits mostly on one side of zero: a plain Sylvester block (first column
    all ones) sums that offset into its coordinate 0, and random signs spread it (a smaller rotated amax)."""
    from ditq.calibration.calibrate import CalibConfig
    from ditq.calibration.methods.base import act_scales_for, pooled_range
    from ditq.calibration.methods.smoothquant import one_group
    from ditq.core.quantizers import rotate, rotation_signs

    ctx = htg_context(tiny_model, CalibConfig(steps=4, samples=2, progress=False), groups=1, alpha_criterion="local",
                      rotation=BLOCK)
    site = next(s for s in ctx.sites if s.name.endswith("ff.net.2"))
    grouping = one_group(ctx)
    st = ctx.stats[site.name]
    k = st.ch_max.shape[1]
    hi, lo = pooled_range(st, list(range(len(ctx.timesteps))))
    z, d = ((hi + lo) / 2)[None], rotation_signs(k)
    plain, _ = act_scales_for(ctx, site, grouping, z, torch.ones(k), search=False, rotation=BLOCK)
    signed, _ = act_scales_for(ctx, site, grouping, z, d, search=False, rotation=BLOCK)
    assert float(signed[0]) < 0.8 * float(plain[0])
    x = rotate(st.reservoir.reshape(-1, k).float() - z, BLOCK).abs().amax(0).reshape(-1, BLOCK)
    assert bool((x[:, 0] > 2 * x[:, 1:].median(1).values).all())  # the plain rotation's coordinate 0 of each block


def _all_site_inputs(model, config):
    """Every input row of every site's first Linear over one run of the calibration loop, per timestep."""
    from ditq.calibration.calibrate import sampler_forward_loop
    from ditq.calibration.stats import call_timestep
    from ditq.models.loading import quant_sites

    seen: dict = {}
    now: dict = {}
    modules = dict(model.transformer.named_modules())
    hooks = [model.transformer.register_forward_pre_hook(
        lambda _m, a, k: now.__setitem__("t", call_timestep(a, k)), with_kwargs=True)]
    for site in quant_sites(model.transformer):
        hooks.append(modules[site.linears[0]].register_forward_pre_hook(
            lambda _m, a, name=site.name: seen.setdefault(name, []).append(
                (now["t"], a[0].detach().reshape(-1, a[0].shape[-1])))))
    try:
        with torch.no_grad():
            sampler_forward_loop(model, config)(model.transformer)
    finally:
        for h in hooks:
            h.remove()
    return seen


def test_htg_rotated_scales_are_the_exact_amax_of_the_rotated_input(tiny_model, caplog):
    """``rotation_ranges="exact"``: a rotated input's static scale covers every calibration row of its group (a
    second run of the loop measures it), not only the reservoir's sampled rows (the default keeps those)."""
    from ditq.calibration.calibrate import CalibConfig, calibrate
    from ditq.calibration.methods.htg import HTGConfig

    config = CalibConfig(steps=6, samples=2, progress=False)
    method = HTGConfig(groups=2, alpha_criterion="local", rotation=BLOCK, rotation_choice=False, timesteps_per_group=0,
                       rotation_ranges="exact")
    with caplog.at_level("INFO", logger="ditq.calibration.calibrate"):
        exact = calibrate(tiny_model, method, config)
    assert "exact ranges of" in caplog.text
    sampled = calibrate(tiny_model, HTGConfig(**{**method.params(), "rotation_ranges": "reservoir"}), config)
    seen = _all_site_inputs(tiny_model, config)
    grew = 0
    for site in exact.sites:
        k = exact.smooth(site.name).numel()
        rot = rotation_matrix(k, exact.linear_spec(site.linears[0]).rotation).float()
        for g in range(exact.num_groups):
            assert torch.equal(exact.shift(site.name, g), sampled.shift(site.name, g))
            x = torch.cat([x for t, x in seen[site.name] if exact.group_of(t) == g])
            y = ((x - exact.shift(site.name, g)) / exact.smooth(site.name)) @ rot
            want = float(y.abs().amax()) / 127
            assert float(exact.act_scale(site.name, g)) == pytest.approx(want, rel=1e-5)
            assert float(sampled.act_scale(site.name, g)) <= want * (1 + 1e-5)
            grew += float(sampled.act_scale(site.name, g)) < want * (1 - 1e-3)
    assert grew  # the reservoir missed some group's largest rotated row


def test_exact_but_final_ranges_keep_the_reservoir_in_the_group_that_ends_sampling(tiny_model):
    """``rotation_ranges="exact_but_final"``: the exact amax in every group but group 0 (t = 0's), which keeps the
    reservoir's; nothing else of the recipe changes."""
    from ditq.calibration.calibrate import CalibConfig, calibrate
    from ditq.calibration.methods.htg import HTGConfig

    config = CalibConfig(steps=6, samples=2, progress=False)
    method = HTGConfig(groups=2, alpha_criterion="local", rotation=BLOCK, rotation_choice=False, timesteps_per_group=0,
                       rotation_ranges="exact_but_final")
    mixed = calibrate(tiny_model, method, config)
    exact, sampled = (calibrate(tiny_model, HTGConfig(**{**method.params(), "rotation_ranges": r}), config)
                      for r in ("exact", "reservoir"))
    assert mixed.groups[0].interval[0] == 0 and mixed.num_groups == 2
    assert all(torch.equal(mixed.tensors[k], sampled.tensors[k]) for k in sampled.tensors
               if not k.endswith(".act_scale"))
    grew = 0
    for site in mixed.sites:
        assert torch.equal(mixed.act_scale(site.name, 0), sampled.act_scale(site.name, 0))
        assert torch.equal(mixed.act_scale(site.name, 1), exact.act_scale(site.name, 1))
        grew += float(exact.act_scale(site.name, 1)) > float(sampled.act_scale(site.name, 1))
    assert grew  # group 1 did take a range the reservoir had missed


def test_auto_ranges_keep_the_candidate_that_samples_the_calibration_trajectories_closest_to_fp(tiny_model):
    """``rotation_ranges="auto"`` (the default): the reservoir or the exact-but-final ranges, whichever recipe's
    fake-quantized model samples the calibration's own conditions and noise closer to FP (mean per-sample PSNR);
    the recorded PSNRs are recomputed here, and the recipe is the chosen candidate exactly."""
    from ditq.calibration.calibrate import CalibConfig, calibrate, sampler_forward_loop
    from ditq.calibration.methods.htg import HTGConfig
    from ditq.runtime.backends.fake_quant import group_denoiser

    assert HTGConfig().rotation_ranges == "auto"
    config = CalibConfig(steps=6, samples=2, progress=False)
    method = HTGConfig(groups=2, alpha_criterion="local", rotation=BLOCK, rotation_choice=False, timesteps_per_group=0)
    auto = calibrate(tiny_model, method, config)
    cands = {r: calibrate(tiny_model, HTGConfig(**{**method.params(), "rotation_ranges": r}), config)
             for r in ("reservoir", "exact_but_final")}
    assert any(not torch.equal(v, cands["exact_but_final"].tensors[k]) for k, v in cands["reservoir"].tensors.items())
    record = auto.calibration["method"]["rotation_ranges"]
    loop = sampler_forward_loop(tiny_model, config)
    ref = loop.run(lambda _t: tiny_model.denoiser().predict, "fp")
    psnr = {}
    for name, rec in cands.items():
        dens = [group_denoiser(tiny_model, rec, g).predict for g in range(rec.num_groups)]
        out = loop.run(lambda t, rec=rec, dens=dens: dens[rec.group_of(t)], name)
        psnr[name] = float((10 * torch.log10(4 / (out - ref).square().flatten(1).mean(1))).mean())
        assert record["mean_psnr_db"][name] == pytest.approx(psnr[name], abs=2e-3)
    assert record["chosen"] == max(psnr, key=psnr.__getitem__)
    chosen = cands[record["chosen"]]
    assert set(auto.tensors) == set(chosen.tensors)
    assert all(torch.equal(auto.tensors[k], chosen.tensors[k]) for k in chosen.tensors)


def test_auto_ranges_with_a_custom_forward_loop_keep_the_reservoir_in_one_run(tiny_model, caplog):
    from ditq.calibration.calibrate import CalibConfig, calibrate, sampler_forward_loop
    from ditq.calibration.methods.htg import HTGConfig

    config = CalibConfig(steps=6, samples=2, progress=False)
    runs = []

    def loop(transformer):  # the user's data: nothing defines trajectories to compare candidates on
        runs.append(1)
        sampler_forward_loop(tiny_model, config)(transformer)

    method = HTGConfig(groups=2, alpha_criterion="local", rotation=BLOCK, rotation_choice=False, timesteps_per_group=0)
    with caplog.at_level("WARNING", logger="ditq.calibration.calibrate"):
        rec = calibrate(tiny_model, method, config, forward_loop=loop)
    assert len(runs) == 1 and "keeping the reservoir ranges" in caplog.text
    assert rec.calibration["method"]["rotation_ranges"]["chosen"] == "reservoir"
    ref = calibrate(tiny_model, HTGConfig(**{**method.params(), "rotation_ranges": "reservoir"}), config)
    assert all(torch.equal(rec.tensors[k], ref.tensors[k]) for k in ref.tensors)


def test_exact_but_final_with_one_group_is_the_reservoir_without_a_second_run(tiny_model):
    from ditq.calibration.calibrate import CalibConfig, calibrate, sampler_forward_loop
    from ditq.calibration.methods.htg import HTGConfig

    config = CalibConfig(steps=4, samples=2, progress=False)
    runs = []

    def loop(transformer):
        runs.append(1)
        sampler_forward_loop(tiny_model, config)(transformer)

    method = HTGConfig(groups=1, alpha_criterion="local", rotation=BLOCK, rotation_choice=False,
                       rotation_ranges="exact_but_final")
    rec = calibrate(tiny_model, method, config, forward_loop=loop)
    assert len(runs) == 1 and rec.linear_spec(rec.sites[0].linears[0]).rotation
    ref = calibrate(tiny_model, HTGConfig(**{**method.params(), "rotation_ranges": "reservoir"}), config)
    assert all(torch.equal(rec.tensors[k], ref.tensors[k]) for k in ref.tensors)


def test_exact_rotated_ranges_keep_the_reservoir_where_the_loop_does_not_repeat(tiny_model, caplog):
    from ditq.calibration.calibrate import CalibConfig, calibrate, sampler_forward_loop
    from ditq.calibration.methods.htg import HTGConfig

    config = CalibConfig(steps=4, samples=2, progress=False)
    runs = []

    def once(transformer):  # an exhausted data loader: the second run calls the model no more
        if not runs:
            sampler_forward_loop(tiny_model, config)(transformer)
        runs.append(1)

    method = HTGConfig(groups=1, alpha_criterion="local", rotation=BLOCK, rotation_choice=False,
                       rotation_ranges="exact")
    with caplog.at_level("WARNING", logger="ditq.calibration.calibrate"):
        rec = calibrate(tiny_model, method, config, forward_loop=once)
    assert len(runs) == 2 and "keep the reservoir's range" in caplog.text
    ref = calibrate(tiny_model, HTGConfig(**{**method.params(), "rotation_ranges": "reservoir"}), config)
    assert all(torch.equal(rec.act_scale(s.name, 0), ref.act_scale(s.name, 0)) for s in rec.sites)


def test_htg_static_rotation_exports_lint_clean_for_every_target_and_matches_fake_quant(calibrated, tiny_model,
                                                                                          tiny_reference, tmp_path):
    """Old export: W8 per-channel weights of a rotated Linear went out as an INT8 block DQ (block_size = K), which
    no TensorRT version builds (lint rule block-type); now they are per channel and the graph is clean."""
    from ditq.artifacts.lint import TARGETS, lint_dir

    rec = calibrated("htg", rotation=BLOCK, rotation_choice=False)
    art = export_and_compare(tiny_model, rec, tiny_reference, tmp_path / "w8")
    for target in TARGETS:
        assert lint_dir(art.root, target) == {name: [] for name in lint_dir(art.root, target)}, target
    graph = onnx.load(str(art.path(0)), load_external_data=False).graph
    rotations = [n for n in graph.node if n.name.endswith(".rotate")]
    assert len(rotations) == len(rec.sites)  # one FP MatMul per site, shared by its Linears (qkv: three)
    dims = {t.name: tuple(t.dims) for t in graph.initializer}
    assert {dims[n.input[1]] for n in rotations} == {(BLOCK, BLOCK)}  # fc2 (128 channels): 4 blocks, reshaped
    lins = {lin for s in rec.sites for lin in s.linears}
    assert len([n for n in graph.node if n.op_type == "QuantizeLinear"]) == len(lins)


def test_htg_w4a8_rotation_exports_and_matches_fake_quant(calibrated, tiny_model, tiny_reference, tmp_path):
    rec = calibrated("htg", w_bits=4, rotation=BLOCK, rotation_choice=False)
    assert all(rec.linear_spec(lin).w_bits == 4 and rec.linear_spec(lin).rotation for s in rec.sites
               for lin in s.linears)
    export_and_compare(tiny_model, rec, tiny_reference, tmp_path / "w4")


def test_htg_rotation_choice_and_smoothquant_rotation(calibrated, tiny_model):
    rec = calibrated("htg", rotation=BLOCK, rotation_choice=True, alpha_criterion="global")
    rotated = rec.calibration["method"]["rotated_sites"]
    assert all(rec.linear_spec(lin).rotation == rotated.get(s.name, 0) for s in rec.sites for lin in s.linears)
    sq = calibrated("smoothquant", rotation=16)
    assert {sq.linear_spec(lin).rotation for s in sq.sites for lin in s.linears} == {16}
    assert_fold_exact(tiny_model, sq)


def test_htg_rotates_integer_activations_by_default(calibrated):
    from ditq.calibration.methods.htg import ROTATION_AUTO, HTGConfig

    rec = calibrated("htg")
    rotated = rec.calibration["method"]["rotated_sites"]  # recorded when the rotation was tried (the tiny model's
    assert set(rotated.values()) <= {min(ROTATION_AUTO, 32), min(ROTATION_AUTO, 128)}  # criterion may keep none)
    assert all(rec.linear_spec(lin).rotation == rotated.get(s.name, 0) for s in rec.sites for lin in s.linears)
    assert HTGConfig().rotation_for("int") == ROTATION_AUTO
    assert HTGConfig(act="token").rotation_for("int") == ROTATION_AUTO and HTGConfig().rotation_for("fp8_e4m3") == 0
    assert HTGConfig(rotation=0).rotation_for("int") == 0 and HTGConfig(rotation=16).rotation_for("int") == 16


@pytest.mark.parametrize("method,bad", [("htg", 48), ("htg", 1), ("htg", "on"), ("htg", True), ("smoothquant", -2)])
def test_rotation_must_be_a_power_of_two(method, bad):
    from ditq.calibration.methods import method_config

    with pytest.raises(DitqError, match="rotation"):
        method_config(method, rotation=bad)


def test_rotation_block_falls_back_to_the_largest_power_of_two_dividing_the_channels():
    from types import SimpleNamespace

    from ditq.calibration.methods.base import site_rotations

    stats = {"a": SimpleNamespace(ch_max=torch.zeros(1, 96)), "b": SimpleNamespace(ch_max=torch.zeros(1, 7)),
             "c": SimpleNamespace(ch_max=torch.zeros(1, 256))}
    ctx = SimpleNamespace(fmt="int", sites=[SimpleNamespace(name=n) for n in stats], stats=stats)
    assert site_rotations(ctx, 64) == {"a": 32, "b": 0, "c": 64}  # type: ignore[arg-type]
    with pytest.raises(DitqError, match="format"):
        site_rotations(SimpleNamespace(**{**vars(ctx), "fmt": "fp8_e4m3"}), 64)  # type: ignore[arg-type]


@torch.no_grad()
def test_torch_int8_runs_a_static_rotated_recipe_like_fake_quant(calibrated, tiny_model):
    from ditq.runtime.backends.fake_quant import group_denoiser
    from ditq.runtime.backends.torch_int8 import torch_int8_backend

    rec = calibrated("htg", rotation=BLOCK, rotation_choice=False)
    backend = torch_int8_backend(tiny_model, rec)
    gen = torch.Generator().manual_seed(3)
    for g in rec.groups:
        x, t = torch.randn(4, 1, 8, 8, generator=gen), torch.full((4,), float(sum(g.interval) // 2))
        y = {"class_labels": torch.arange(4)}
        ref, out = group_denoiser(tiny_model, rec, g.group_id)(x, t, y), backend(x, t, y)
        assert float(10 * torch.log10(ref.square().sum() / (ref - out).square().sum().clamp_min(1e-30))) > 40


def test_rotation_without_smoothing_global_criterion(calibrated, tiny_model):
    """Rotation in place of smoothing (``alphas=()``): the global criterion used to fail on its empty key list."""
    # rotation_choice off: the global criterion would otherwise choose rotated-or-not for the whole model (on this
    # tiny model the 12 x 16 probes prefer unrotated), and this checks the rotated path
    rec = calibrated("htg", rotation=BLOCK, alphas=(), alpha_criterion="global", rotation_choice=False)
    # no smoothing: the smoothing vector is ones, or the rotation's random signs on a rotated site
    assert all(site.alpha is None and torch.equal(rec.smooth(site.name).abs(), torch.ones_like(rec.smooth(site.name)))
               for site in rec.sites)
    assert any(rec.linear_spec(site.linears[0]).rotation for site in rec.sites)
    assert_fold_exact(tiny_model, rec)


def test_htg_rotated_shift_centres_every_rotated_coordinate(tiny_model):
    """A rotated site's shift (``rotation_shift="rotated"``, the default) centres each coordinate of the rotated
    input over its group's reservoir rows, so no common offset is left for the rotation to add into every coordinate;
    its rotated amax is then the least any shift gives. ``"channel"`` keeps the channel mid-range of x."""
    from ditq.calibration.calibrate import CalibConfig
    from ditq.calibration.methods.base import folded_group_inputs
    from ditq.calibration.methods.htg import HTGConfig
    from ditq.calibration.methods.smoothquant import one_group
    from ditq.core.quantizers import rotate

    params = dict(alpha_criterion="local", rotation=BLOCK, rotation_choice=False, shift_choice=False)
    ctx = htg_context(tiny_model, CalibConfig(steps=4, samples=2, progress=False), groups=1, **params)
    grouping = one_group(ctx)
    shrunk = 0
    for site in ctx.sites:
        block = min(BLOCK, largest_pow2_divisor(ctx.stats[site.name].ch_max.shape[1]))
        cands = HTGConfig(**params)._candidates(ctx, site, grouping, block)
        chan = HTGConfig(**params, rotation_shift="channel")._candidates(ctx, site, grouping, block)
        for key, (z, s, scales, _) in cands.items():
            zc, sc_, scales_c, _ = chan[key]
            assert torch.equal(s, sc_)
            u = rotate(folded_group_inputs(ctx, site, grouping, z, s)[0].double(), block)
            centre = (u.amax(0) + u.amin(0)) / 2
            assert float(centre.abs().max()) <= 1e-4 * float(u.abs().max()), (site.name, key)
            u_c = rotate(folded_group_inputs(ctx, site, grouping, zc, s)[0].double(), block)
            assert float(u.abs().max()) <= float(u_c.abs().max()) * (1 + 1e-6), (site.name, key)
            assert float(scales[0]) <= float(scales_c[0]) * (1 + 1e-6)
            shrunk += float(u.abs().max()) < 0.9 * float(u_c.abs().max())
    assert shrunk  # some site's rotated range shrinks by over 10 % (fc2's post-GELU offset)


def test_htg_rotated_shift_recipe_folds_exactly(calibrated, tiny_model, tiny_reference, tmp_path):
    rec = calibrated("htg", rotation=BLOCK, rotation_choice=False)
    chan = calibrated("htg", rotation=BLOCK, rotation_choice=False, rotation_shift="channel")
    assert any(not torch.allclose(rec.shift(s.name, 0), chan.shift(s.name, 0)) for s in rec.sites)
    assert_fold_exact(tiny_model, rec)
    export_and_compare(tiny_model, rec, tiny_reference, tmp_path / "rotshift")
