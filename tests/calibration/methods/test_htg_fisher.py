"""HTG's Fisher criterion: the per-site model-output SQNR to first order, from backward passes."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from method_checks import htg_context

from ditq.calibration.methods.htg import HTGConfig

BLOCK = 8  # a rotation block the tiny DiT's 32-channel inputs divide into several blocks


@pytest.fixture(scope="module")
def context(tiny_model):
    from ditq.calibration.calibrate import CalibConfig

    return htg_context(tiny_model, CalibConfig(steps=8, samples=2, seed=0, progress=False), **_PARAMS)


_PARAMS = dict(groups=2, alpha_criterion="local", timesteps_per_group=0, rotation=0)


def _options(ctx, grouping, site):
    block = BLOCK if ctx.fmt == "int" else 0
    return HTGConfig(groups=2, rotation=block)._candidates(ctx, site, grouping, block, search=False)


def _compare(ctx, grouping, site):
    """(Fisher estimate, measured model-output SQNR) per candidate of ``site``: 8 probes x 16 rows."""
    from ditq.calibration.methods.site_probe import FisherScorer, SiteScorer

    opts = _options(ctx, grouping, site)
    measured = SiteScorer(ctx, grouping, n_timesteps=8, batch=16)
    exact = {k: measured.score(site, *v[:3], rotation=k[2]) for k, v in opts.items()}
    est = FisherScorer(ctx, grouping, n_timesteps=8, batch=16, samples=8).scores(
        {site.name: {k: (*v[:3], k[2]) for k, v in opts.items()}})[site.name]
    return est, exact


@pytest.mark.parametrize("site_index", [0, 1, 2, 3])  # qkv (three Linears), out-projection, fc1, fc2
def test_fisher_activation_term_matches_the_model_output(context, site_index, monkeypatch):
    """Weights kept exact, so only the activation rounding moves the output: for every candidate of a site
    (shifted or not, every alpha, rotated or not) the estimate is within 2 dB of the measured output SQNR and
    ranks the candidates alike (a gradient without the smoothing or the rotation is off by several dB)."""
    from ditq.calibration.methods import site_probe

    scales = site_probe.weight_scales
    monkeypatch.setattr(site_probe, "weight_scales", lambda w, *a, **k: scales(w, *a, **k) / 2**12)
    monkeypatch.setattr(site_probe, "fake_quant_weight", lambda w, *a, **k: w)
    est, exact = _compare(context, _two_groups(context), context.sites[site_index])
    diffs = [est[k] - exact[k] for k in exact]
    assert max(abs(d) for d in diffs) < 2.0, diffs
    # 0.91 on qkv with the channel mid-range shift, 0.84 with the rotated one (HTG's default): its range is centred
    # tightly on this tiny reservoir (3-5 calls per group), so the probe rows clip now and then and the rotated
    # candidates' scores jump between neighbouring alphas (both scores see the clipping; they weigh it differently)
    assert _spearman(list(exact.values()), [est[k] for k in exact]) > 0.8


@pytest.mark.parametrize("fmt", ["int", "fp8_e4m3"])
@pytest.mark.parametrize("site_index", [0, 1, 2, 3])
def test_fisher_scores_track_the_model_output(context, site_index, fmt):
    """Weights and activations rounded: the weight term is the expected rounding error (the measured score is one
    rounding's, which scatters by a few dB on this tiny model), so the agreement is looser, but the ranking holds
    and the Fisher pick is near the best measured candidate. FP8 (no rotation) takes the per-element weight term:
    E4M3's step follows each weight's binade."""
    ctx = replace(context, fmt=fmt)
    est, exact = _compare(ctx, _two_groups(ctx), ctx.sites[site_index])
    diffs = [est[k] - exact[k] for k in exact]
    assert abs(sum(diffs) / len(diffs)) < 2.0, diffs
    # one rounding's scatter: qkv's rotated alpha-0.5 candidate measures about 2 dB above its neighbours (a lucky
    # rounding) since the rotation takes random channel signs; the mean above is what the estimate must get right
    assert max(abs(d) for d in diffs) < 4.5, diffs
    if max(exact.values()) - min(exact.values()) > 3.0:  # candidates that differ beyond one rounding's scatter
        assert _spearman(list(exact.values()), [est[k] for k in exact]) > 0.75
        assert exact[max(est, key=est.__getitem__)] > max(exact.values()) - 2.0


def test_fisher_leaves_the_model_as_it_was(context, tiny_model):
    from ditq.calibration.methods.site_probe import FisherScorer

    ctx = context
    grouping = _two_groups(ctx)
    site = ctx.sites[0]
    before = {n: p.requires_grad for n, p in ctx.transformer.named_parameters()}
    options = _options(ctx, grouping, site)
    FisherScorer(ctx, grouping).scores({site.name: {k: (*v[:3], k[2]) for k, v in options.items()}})
    assert {n: p.requires_grad for n, p in ctx.transformer.named_parameters()} == before
    assert all(p.grad is None for p in ctx.transformer.parameters())
    assert not any(m._forward_hooks for m in ctx.transformer.modules())


def test_htg_fisher_and_auto_criteria(context, monkeypatch):
    from ditq.calibration.methods import site_probe

    sol = HTGConfig(groups=2, alpha_criterion="fisher").solve(context)
    assert sol.info["alpha_criterion"] == "fisher"
    assert HTGConfig().alpha_criterion == "auto"
    assert HTGConfig(groups=2).solve(context).info["alpha_criterion"] == "output"  # a tiny model: within budget
    monkeypatch.setattr(site_probe, "OUTPUT_CRITERION_BUDGET_MACS", 1.0)
    assert HTGConfig(groups=2).solve(context).info["alpha_criterion"] == "fisher"


def test_output_criterion_cost_estimate(context, monkeypatch):
    """Scorings times probe tokens times the quantized Linear parameters a scoring runs: those of the site's block
    and the blocks after it, or all of them when the block inputs would not fit the scorer's cache."""
    from ditq.calibration.methods import site_probe
    from ditq.calibration.methods.base import pick_probes

    ctx = context
    probes = pick_probes(ctx, 6, 8)
    rows = sum(x.shape[0] for x, _, _ in probes)
    tokens = ctx.probes[0][0][0, 0].numel() // ctx.transformer.config.patch_size ** 2
    params = sum(w.numel() for ws in ctx.weights.values() for w in ws)
    blocks = len(ctx.transformer.transformer_blocks)
    skipped = 10 * rows * tokens * params * (blocks + 1) / (2 * blocks)
    assert site_probe.output_criterion_macs(ctx, 10, 6, 8) == pytest.approx(skipped)
    monkeypatch.setattr(site_probe, "BLOCK_CACHE_BYTES", 0)
    assert site_probe.output_criterion_macs(ctx, 10, 6, 8) == 10 * rows * tokens * params


def _two_groups(ctx):
    from ditq.calibration.groups import SiteRange, group_timesteps

    ranges = [SiteRange(st.ch_max.numpy(), st.ch_min.numpy(), max(st.power, 1e-12)) for st in ctx.stats.values()]
    return group_timesteps(ctx.timesteps, ranges, 2, num_train_timesteps=ctx.num_train_timesteps, bits=8,
                           max_groups=2)


def _spearman(a, b):
    ra = torch.tensor(a).argsort().argsort().double()
    rb = torch.tensor(b).argsort().argsort().double()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / math.sqrt(float((ra * ra).sum() * (rb * rb).sum())))


def test_fisher_scores_pixart_caption_sites(pixart_model):
    """PixArt's cross-attention k/v read the caption embeddings, which every block shares: their gradient must come
    through the site's own Linears (not the caption's total gradient), and the estimate tracks the measured SQNR."""
    from ditq.calibration.calibrate import CalibConfig

    ctx = htg_context(pixart_model, CalibConfig(steps=8, samples=2, seed=0, progress=False), **_PARAMS)
    kv = next(s for s in ctx.sites if s.name.endswith("attn2.kv"))  # to_k and to_v on the caption
    est, exact = _compare(ctx, _two_groups(ctx), kv)
    diffs = [est[k] - exact[k] for k in exact]
    assert abs(sum(diffs) / len(diffs)) < 2.0, diffs
    assert max(abs(d) for d in diffs) < 4.0, diffs
    assert _spearman(list(exact.values()), [est[k] for k in exact]) > 0.75  # (its errors are ~90 dB down: one
    # rounding's measured score scatters by 3 dB between neighbouring candidates, so no pick-by-pick check here)


def test_fisher_passes_of_fewer_rows_estimate_the_same(context):
    """Large images run the probes a few rows per pass (memory); every term is a sum over rows, so one row per pass
    estimates the same scores (other random draws: within a fraction of a dB)."""
    from ditq.calibration.methods.site_probe import FisherScorer, image_tokens

    ctx = context
    grouping = _two_groups(ctx)
    cands = {s.name: {k: (*v[:3], k[2]) for k, v in _options(ctx, grouping, s).items()} for s in ctx.sites[:4]}
    whole = FisherScorer(ctx, grouping, samples=8).scores(cands)
    rowwise = FisherScorer(ctx, grouping, samples=8, max_tokens=image_tokens(ctx, ctx.probes[0][0])).scores(cands)
    diffs = [rowwise[n][k] - whole[n][k] for n in cands for k in cands[n]]
    assert max(abs(d) for d in diffs) < 0.75, diffs


def test_fisher_checkpointed_passes_score_the_same(context):
    """The backward recomputes each block's activations (gradient checkpointing, for memory) instead of keeping
    them: the same draws give the same scores, and the model's own checkpointing setting comes back as it was."""
    from ditq.calibration.methods.site_probe import FisherScorer

    ctx = context
    grouping = _two_groups(ctx)
    cands = {s.name: {k: (*v[:3], k[2]) for k, v in _options(ctx, grouping, s).items()} for s in ctx.sites[:4]}
    assert not ctx.transformer.is_gradient_checkpointing
    calls = []
    blocks = list(ctx.transformer.transformer_blocks)
    handle = blocks[0].register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        kept = FisherScorer(ctx, grouping, checkpoint=False).scores(cands)
        n_kept, calls[:] = len(calls), []
        recomputed = FisherScorer(ctx, grouping, checkpoint=True).scores(cands)
    finally:
        handle.remove()
    assert len(calls) > n_kept  # the block did run again in the backward
    assert not ctx.transformer.is_gradient_checkpointing
    diffs = [recomputed[n][k] - kept[n][k] for n in cands for k in cands[n]]
    assert max(abs(d) for d in diffs) < 1e-6, diffs
