"""HTG's alpha criterion: the model-output SQNR on calibration probes, not the quantized Linear's local error."""

from __future__ import annotations

import pytest
import torch
from method_checks import htg_context

from ditq.calibration.methods.htg import HTGConfig
from ditq.errors import DitqError

RELEVANT = 4  # fc2 output channels the residual stream keeps; the others are gated to ~0


@pytest.fixture(scope="module")
def gated_model(tmp_path_factory):
    """The tiny DiT with the MLP gate of every block ~0 on all but RELEVANT channels, and fc2's rows for the
    gated-off channels 50x larger: fc2's local output error is dominated by channels the model output never sees."""
    from diffusers import DDPMScheduler

    from ditq.models.loading import load_model
    from ditq.models.tiny import tiny_dit

    model = tiny_dit(0)
    c = model.config.num_attention_heads * model.config.attention_head_dim
    with torch.no_grad():
        for block in model.transformer_blocks:
            block.norm1.linear.weight[5 * c:6 * c] = 0  # gate_mlp = chunk 5 of 6
            gate = torch.full((c,), 1e-3)
            gate[:RELEVANT] = 1.0
            block.norm1.linear.bias[5 * c:6 * c] = gate
            block.ff.net[2].weight[RELEVANT:] *= 50.0
    out = tmp_path_factory.mktemp("gated") / "model"
    model.save_pretrained(out / "transformer", safe_serialization=True)
    DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2").save_pretrained(out / "scheduler")
    return load_model(out)


def _context(model, seed: int):
    from ditq.calibration.calibrate import CalibConfig

    params = dict(groups=1, shift_choice=False, alpha_criterion="local")
    return HTGConfig(**params), htg_context(model, CalibConfig(steps=8, samples=2, seed=seed, progress=False),
                                            **params)


def test_output_criterion_picks_a_better_alpha_than_the_local_one(gated_model):
    from ditq.calibration.methods.site_probe import SiteScorer
    from ditq.calibration.methods.smoothquant import one_group

    cfg, ctx = _context(gated_model, seed=0)
    _, held_out = _context(gated_model, seed=3)  # other noise: where the picks are judged
    site = next(s for s in ctx.sites if s.name.endswith("0.ff.net.2"))
    grouping = one_group(ctx)
    options = cfg._candidates(ctx, site, grouping)
    scorer = SiteScorer(ctx, grouping)
    local = min(options, key=lambda k: options[k][3])
    output = max(options, key=lambda k: scorer.score(site, *options[k][:3]))
    assert local != output
    judge = SiteScorer(held_out, one_group(held_out), n_timesteps=8)
    gain = judge.score(site, *options[output][:3]) - judge.score(site, *options[local][:3])
    assert gain > 0.3, (local, output, gain)


def test_htg_records_its_criterion_and_falls_back_to_local_without_probes(gated_model):
    from ditq.calibration.methods.smoothquant import one_group

    cfg, ctx = _context(gated_model, seed=0)
    sol = HTGConfig(groups=1).solve(ctx)
    assert sol.info["alpha_criterion"] == "output"
    ctx.probes = []
    sol = HTGConfig(groups=1, alpha_criterion="global").solve(ctx)
    assert sol.info["alpha_criterion"] == "local"
    assert one_group(ctx).n_groups == 1


def test_global_criterion_gives_every_smoothable_site_one_alpha(gated_model):
    _, ctx = _context(gated_model, seed=0)
    sol = HTGConfig(groups=1, alpha_criterion="global", alphas=(0.5, 0.8)).solve(ctx)
    assert sol.info["alpha_criterion"] == "global"
    assert len({a for a in sol.alphas.values() if a is not None}) == 1


def test_joint_sweep_chooses_sites_with_the_whole_model_quantized(gated_model):
    """Coordinate descent from the per-site choices: the whole-model probe SQNR it records never falls, the last
    figure is that of the recipe it returns (re-scored from the solution's own tensors), and it changed a choice."""
    from ditq.calibration.methods.site_probe import SiteScorer

    _, ctx = _context(gated_model, seed=0)
    cfg = HTGConfig(groups=2, alphas=(0.3, 0.8), rotation=0, joint_sweeps=2)
    sol = cfg.solve(ctx)
    trace = sol.info["joint_sqnr_db"]
    assert 2 <= len(trace) <= 3 and all(b >= a for a, b in zip(trace, trace[1:])), trace
    assert trace[-1] > trace[0], trace
    n_timesteps, batch = sol.info["probes"]
    rescored = SiteScorer(ctx, sol.grouping, n_timesteps=n_timesteps, batch=batch).score_all(
        {s.name: (sol.shifts[s.name], sol.smooth[s.name], sol.act_scales[s.name]) for s in ctx.sites})
    assert rescored == pytest.approx(trace[-1], abs=1e-3)
    plain = HTGConfig(groups=2, alphas=(0.3, 0.8), rotation=0).solve(ctx)
    assert "joint_sqnr_db" not in plain.info
    assert plain.alphas != sol.alphas or plain.info["unshifted_sites"] != sol.info["unshifted_sites"]
    with pytest.raises(DitqError, match="joint_sweeps"):
        HTGConfig(joint_sweeps=-1)
    # another criterion runs as without it (the sweep needs the per-site output criterion)
    glob = HTGConfig(groups=2, alphas=(0.3, 0.8), rotation=0, alpha_criterion="global", joint_sweeps=1).solve(ctx)
    assert glob.info["alpha_criterion"] == "global" and "joint_sqnr_db" not in glob.info


def test_auto_criterion_takes_the_small_probe_set_before_the_fisher_criterion(gated_model, monkeypatch):
    """12 x 16 probes where the output criterion fits its budget with them, else 6 x 8, else the Fisher criterion."""
    from ditq.calibration.methods import site_probe
    from ditq.calibration.methods.htg import SMALL_PROBES

    _, ctx = _context(gated_model, seed=0)
    cfg = HTGConfig(groups=1, alphas=(0.5,), rotation=0)
    assert (cfg.probe_timesteps, cfg.probe_batch) == (12, 16) and SMALL_PROBES == (6, 8)
    options = sum(len(cfg._candidates(ctx, s, cfg.solve(ctx).grouping, search=False)) for s in ctx.sites)
    big, small = (site_probe.output_criterion_macs(ctx, options, *p) for p in ((12, 16), SMALL_PROBES))
    assert big > small  # 8 of the 8 recorded calls against 6 (4 rows each)
    for budget, want in ((big, ("output", [12, 16])), ((big + small) / 2, ("output", [6, 8])),
                         (small / 2, ("fisher", [6, 8]))):
        monkeypatch.setattr(site_probe, "OUTPUT_CRITERION_BUDGET_MACS", budget)
        info = cfg.solve(ctx).info
        assert (info["alpha_criterion"], info["probes"]) == want, budget


def test_alpha_criterion_is_checked():
    with pytest.raises(DitqError, match="alpha_criterion"):
        HTGConfig(alpha_criterion="psnr")


@pytest.mark.parametrize("clip", [False, True])
def test_default_activation_scale_is_the_groups_calibration_amax(gated_model, clip):
    """By default nothing the calibration saw is clipped: each group's scale is the folded input's exact amax over
    the group's calibration calls / 127. The MSE clip search (act_clip_search=True, off by measurement) clips."""
    _, ctx = _context(gated_model, seed=0)
    sol = HTGConfig(groups=2, alpha_criterion="global", alphas=(0.5,), **({"act_clip_search": True} if clip else {})
                    ).solve(ctx)
    ratios = []
    for site in ctx.sites:
        st, shifts, smooth = ctx.stats[site.name], sol.shifts[site.name], sol.smooth[site.name]
        for g in range(sol.grouping.n_groups):
            rows = ctx.rows_of(sol.grouping, g)
            hi, lo = st.ch_max[rows].amax(0), st.ch_min[rows].amin(0)
            amax = float(torch.maximum(hi - shifts[g], shifts[g] - lo).div(smooth).amax())
            ratios.append(float(sol.act_scales[site.name][g]) * 127 / amax)
    if clip:
        assert min(ratios) < 0.99
    else:
        assert ratios == pytest.approx([1.0] * len(ratios), rel=1e-5)


@pytest.mark.parametrize("kind", ["dit", "pixart"])
def test_scoring_a_site_skips_the_blocks_before_it_with_the_same_result(kind, gated_model, request):
    """The output criterion starts from the FP hidden states it recorded at the site's block: the blocks before it
    are not run, and every score is bit for bit what the whole model gives (one site or several)."""
    from ditq.calibration.calibrate import CalibConfig
    from ditq.calibration.methods.base import block_index
    from ditq.calibration.methods.site_probe import SiteScorer, scored_params
    from ditq.calibration.methods.smoothquant import one_group

    model = gated_model if kind == "dit" else request.getfixturevalue("pixart_model")
    params = dict(groups=1, shift_choice=False, alpha_criterion="local")
    ctx = htg_context(model, CalibConfig(steps=8, samples=2, seed=0, progress=False), **params)
    cfg, grouping = HTGConfig(**params), one_group(ctx)
    fast, slow = (SiteScorer(ctx, grouping, n_timesteps=3, batch=4) for _ in range(2))
    slow.evaluator.block_inputs = None  # what the scorer computed before it kept the block inputs
    blocks = fast.evaluator.blocks
    assert fast.evaluator.block_inputs is not None and len(blocks) >= 2
    ran = [0] * len(blocks)
    for i, b in enumerate(blocks):
        b.attn1.register_forward_hook(lambda *_, i=i: ran.__setitem__(i, ran[i] + 1))
    by_block = {block_index(s.name): s for s in ctx.sites}
    first, last = by_block[0], by_block[len(blocks) - 1]
    choice = {s.name: next(iter(cfg._candidates(ctx, s, grouping).values()))[:3] for s in (first, last)}
    for site in (first, last):
        ran[:] = [0] * len(blocks)
        score = fast.score(site, *choice[site.name])
        start = block_index(site.name)
        assert ran == [0] * start + [3] * (len(blocks) - start), (site.name, ran)
        assert score == slow.score(site, *choice[site.name])
    assert fast.score_all(choice) == slow.score_all(choice)
    assert not any("forward" in vars(b) for b in blocks)  # the blocks run again afterwards
    # the budget counts the blocks a scoring runs: (n + 1) / 2n of the weights where every block is alike
    total = sum(w.numel() for ws in ctx.weights.values() for w in ws)
    assert scored_params(ctx, skips=False) == total
    assert scored_params(ctx) == pytest.approx(total * (len(blocks) + 1) / (2 * len(blocks)))


def test_the_output_criterion_runs_the_model_on_the_callers_threads(gated_model):
    """solve() runs on one thread (its searches are tiny GEMMs); the criterion's model runs take the caller's back,
    and the thread count is restored afterwards."""
    import dataclasses

    from ditq.calibration.methods.site_probe import SiteScorer
    from ditq.calibration.methods.smoothquant import one_group

    _, ctx = _context(gated_model, seed=0)
    ctx = dataclasses.replace(ctx, threads=2)
    seen = []
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        scorer = SiteScorer(ctx, one_group(ctx), n_timesteps=2, batch=2)
        scorer.evaluator.blocks[-1].register_forward_hook(lambda *_: seen.append(torch.get_num_threads()))
        site = ctx.sites[-1]
        width = ctx.weights[site.name][0].shape[1]
        scorer.score(site, torch.zeros(1, width), torch.ones(width), torch.ones(1))
        assert seen == [2, 2] and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
