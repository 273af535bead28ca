"""End-to-end scoring of one site's quantizer candidate: the model-output SQNR on the calibration probes with only
that site quantized (shift, smoothing scale, per-group activation scales and max-scaled weights as a recipe would
have them), every other Linear in float.

The local criterion (the quantized Linear's own output error on the reservoir) weighs every output channel alike
and ignores what the rest of the network does with the error; this one measures what the model output sees.
``SiteScorer`` measures it with one model run per site and candidate; ``FisherScorer`` estimates it to first order
from backward passes, for models where that many runs are too slow (``auto_criterion`` chooses).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ditq.calibration.groups import Grouping
from ditq.calibration.methods.base import BLOCK_CACHE_BYTES, Context, ProbeEvaluator, block_index, caller_threads
from ditq.core.metrics import ratio_db
from ditq.core.quantizers import (
    dynamic_fake_quant,
    fake_quant,
    fake_quant_weight,
    rotate,
    rounding_variance,
    weight_scales,
)
from ditq.core.sites import Site
from ditq.errors import DitqError

log = logging.getLogger(__name__)


def folded_weight(w: torch.Tensor, smooth: torch.Tensor, rotation: int, *, w_bits: int, w_block: int,
                  fmt: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``W' = W diag(s) R`` and its max scales (per output row, or [N, blocks]): the weights both criteria score."""
    ws = rotate(w * smooth, rotation)
    return ws, weight_scales(ws, w_bits, search=False, block=w_block, fmt=fmt)


class GroupedSiteLinear(nn.Module):
    """``Q_w(W diag(s)) Q_a((x - z_g) / s) + b + W z_g``: a Linear of a site as the folded recipe computes it in
    group ``group`` (the fold is exact in float, so only the quantizers differ from the original Linear).
    ``rotation`` > 0: ``Q_w(W diag(s) R) Q_a(((x - z_g) / s) R)`` with the block-Hadamard R (exact in float too)."""

    def __init__(self, linear: nn.Linear, shifts: torch.Tensor, smooth: torch.Tensor, act_scales: torch.Tensor,
                 *, w_bits: int, a_bits: int, w_block: int, fmt: str = "int", rotation: int = 0,
                 per_token: bool = False) -> None:
        super().__init__()
        w = linear.weight.detach().float()
        self.rotation = rotation
        ws, scale = folded_weight(w, smooth, rotation, w_bits=w_bits, w_block=w_block, fmt=fmt)
        self.weight = fake_quant_weight(ws, scale, w_bits, fmt)
        b = torch.zeros(w.shape[0]) if linear.bias is None else linear.bias.detach().float()
        self.biases = b + shifts.float() @ w.T  # [G, N]
        self.shifts, self.smooth = shifts.float(), smooth.float()
        self.act_scales, self.a_bits, self.fmt = act_scales, a_bits, fmt
        self.per_token = per_token  # quantize the input per token at run time (act_scales unused)
        self.group = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.group
        x = rotate((x - self.shifts[g]) / self.smooth, self.rotation)
        xq = (dynamic_fake_quant(x, self.a_bits) if self.per_token
              else fake_quant(x, float(self.act_scales[g]), self.a_bits, self.fmt))
        return F.linear(xq, self.weight, self.biases[g])


class SiteScorer:
    """``score(site, shifts, smooth, act_scales)``: mean over probes of the model-output SQNR (dB) with that one
    site quantized. Probes: ``n_timesteps`` calibration calls spread over the trajectory, ``batch`` rows each.
    ``per_token``: inputs quantized per token at run time, as the recipe's Linears will be (act_scales unused)."""

    def __init__(self, ctx: Context, grouping: Grouping, *, n_timesteps: int = 6, batch: int = 8,
                 per_token: bool = False, keep_modules: bool = False) -> None:
        self.ctx, self.per_token, self.keep_modules = ctx, per_token, keep_modules
        with caller_threads(ctx):  # the model runs use the caller's threads (solve() runs on one)
            self.evaluator = ProbeEvaluator(ctx, n_timesteps=n_timesteps, batch=batch, skip_blocks=True)
        self.probe_groups = [grouping.group_of(t) for t in self.evaluator.timesteps]
        # keep_modules: each candidate's quantized Linears, kept for joint scoring (which quantizes every site in
        # every call), keyed by the ids of its tensors, which are kept with them so that an id is never reused
        self._kept: dict[tuple[Any, ...], tuple[Any, list[tuple[str, GroupedSiteLinear]]]] = {}

    def _linears(self, site: Site, choice: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
                 rotation: int) -> list[tuple[str, GroupedSiteLinear]]:
        key = (site.name, *map(id, choice), rotation)
        if key in self._kept:
            return self._kept[key][1]
        shifts, smooth, act_scales = choice
        spec = self.ctx.default_spec(site)
        mods = [(lin, GroupedSiteLinear(self.evaluator.modules[lin], shifts, smooth,  # type: ignore[arg-type]
                                        act_scales, w_bits=spec.w_bits, a_bits=spec.a_bits, w_block=spec.w_block,
                                        fmt=spec.fmt, rotation=rotation, per_token=self.per_token))
                for lin in site.linears]
        if self.keep_modules:
            self._kept[key] = (choice, mods)
        return mods

    def score(self, site: Site, shifts: torch.Tensor, smooth: torch.Tensor, act_scales: torch.Tensor,
              rotation: int = 0) -> float:
        return self.score_all({site.name: (shifts, smooth, act_scales)}, {site.name: rotation})

    def score_all(self, choices: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
                  rotations: dict[str, int] | None = None) -> float:
        """The same with every site in ``choices`` (name -> shifts [G, C], smooth [C], act scales [G]) quantized,
        rotated online by ``rotations`` (name -> block-Hadamard size; missing or 0: none)."""
        repl: dict[str, GroupedSiteLinear] = {}
        for site in self.ctx.sites:
            if site.name not in choices:
                continue
            repl.update(self._linears(site, choices[site.name], (rotations or {}).get(site.name, 0)))

        def point(i: int) -> None:
            for m in repl.values():
                m.group = self.probe_groups[i]

        with caller_threads(self.ctx):
            ratios = self.evaluator.noise_ratios(repl, on_probe=point)
        return sum(ratio_db(max(r, 1e-30)) for r in ratios) / len(ratios)


# "auto" runs the per-site model-output criterion while its estimated cost stays within this many multiply-adds (about
# 15 minutes on one CPU core: the patches DiT's 5.5e12 took about 4.5), and the Fisher criterion beyond that
OUTPUT_CRITERION_BUDGET_MACS = 2e13


def image_tokens(ctx: Context, x: torch.Tensor) -> int:
    """Image tokens of one row of the transformer's input ``x`` [B, C, H, W] (H W / patch^2)."""
    patch = int(getattr(getattr(ctx.transformer, "config", None), "patch_size", None) or 1)
    return x[0, 0].numel() // patch**2


def output_criterion_macs(ctx: Context, scorings: int, n_timesteps: int, batch: int) -> float:
    """Multiply-adds of the quantized Linears in ``scorings`` model runs on the criterion's probes, each from the
    scored site's block on (attention and the rest left out): what the per-site model-output criterion costs."""
    from ditq.calibration.methods.base import pick_probes

    probes = pick_probes(ctx, n_timesteps, batch)
    tokens = sum(x.shape[0] * image_tokens(ctx, x) for x, _, _ in probes)  # image tokens, every probe row
    # the hidden states SiteScorer keeps to skip the blocks before a site (the narrowest site input: the width)
    blocks = {block_index(s.name) for s in ctx.sites} - {None}
    width = min((w.shape[1] for ws in ctx.weights.values() for w in ws), default=0)
    skips = tokens * width * 4 * len(blocks) <= BLOCK_CACHE_BYTES
    return float(scorings) * tokens * scored_params(ctx, skips=skips)


def scored_params(ctx: Context, *, skips: bool = True) -> float:
    """Weights one scoring multiplies, on average over the sites: the quantized Linears from the site's
    transformer block on (``ProbeEvaluator`` skips the blocks before it), all of them for a site outside the blocks
    or without ``skips``."""
    if not ctx.sites:
        return 0.0
    size = {s.name: sum(w.numel() for w in ctx.weights[s.name]) for s in ctx.sites}

    def after(name: str) -> int:
        first = block_index(name)
        if first is None or not skips:
            return sum(size.values())
        return sum(n for s, n in size.items() if (index := block_index(s)) is None or index >= first)

    return sum(after(s.name) for s in ctx.sites) / len(ctx.sites)


def auto_criterion(ctx: Context, scorings: int, probes: tuple[int, int],
                   fallback: tuple[int, int] | None = None) -> tuple[str, tuple[int, int]]:
    """``("output", probes)`` where its ``scorings`` model runs on ``probes`` (calibration calls x rows) fit
    ``OUTPUT_CRITERION_BUDGET_MACS``, else the same with the smaller ``fallback`` probes where those fit, else
    ``("fisher", fallback or probes)`` (logged)."""
    tried = [probes] if fallback in (None, probes) else [probes, fallback]
    for p in tried:
        macs = output_criterion_macs(ctx, scorings, *p)
        if macs <= OUTPUT_CRITERION_BUDGET_MACS:
            if p != probes:
                log.info("alpha criterion: output on %d x %d probes (%d x %d would be over its budget)", *p, *probes)
            return "output", p
    log.info("alpha criterion: fisher (the per-site model-output criterion would run %d model scorings, "
             "%.1e multiply-adds, above the %.0e budget)", scorings, macs, OUTPUT_CRITERION_BUDGET_MACS)
    return "fisher", tried[-1]


Candidate = tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]  # shifts [G, C], smooth [C], act scales [G], rotation


class FisherScorer:
    """``scores(candidates)``: ``SiteScorer``'s figure for every candidate of every site, to first order, from one
    forward and ``samples`` backward passes per probe instead of one model run per site and candidate.

    With one site quantized, ``Q(W') Q(x') = W' x' + W' dx' + dW' x'`` (``x' = ((x - z_g) / s) R``,
    ``W' = W diag(s) R``; the shift's ``W z_g`` is in the bias exactly; ``dW' dx'`` is second order), and the model
    output moves by ``J`` times the two error terms. Their power is estimated where the rounding errors are
    independent, element by element (Hutchinson: ``E[(v^T J a)^2]`` over random normal ``v`` gives the weights):
    - activations, per token and input channel: ``sum g'^2 dx'^2`` with ``g' = (g * s) R``, ``g = sum_l u_l W_l``
      the gradient of ``v^T out`` at the site's input through its own Linears (``u_l``: at Linear l's output),
      and ``dx'`` the candidate's actual rounding error; on at most ``act_rows`` token rows of each probe, drawn
      at random and weighted back to the full count (the sum is over independent terms);
    - weights, per element and batch row: ``sum G'^2 E[dW'^2]`` with ``G' = (u^T (x - z_g) / s) R``, the
      gradient with respect to ``W'`` summed over the row's tokens (one weight error reaches every token of an
      image; separate images add in power), and ``E[dW'^2] = step^2 / 12``, the expected rounding error of the
      max-scaled grid: the deployed weights are rounded otherwise anyway (clip search, GPTQ). ``R`` is orthogonal
      within blocks, so with integer steps constant on whole rotation blocks the sum needs no rotation of ``G'``.
    An earlier form, the diagonal in the Linears' output space (``u^2 e^2``, BRECQ's weighting), read 2-5 dB too
    little noise at qkv and fc1 on the demo DiT, whose output-channel errors are correlated; this one's mean over
    a site's candidates is within 0.45 dB of the measured SQNR there (single candidates up to 1.8 dB, where the
    measured score of one rounding jumps between neighbouring alphas), and the linearization itself within 0.05 dB
    of the model (docs/fisher_criterion.md). The probes and their groups are ``SiteScorer``'s; their rows run in
    passes of at most ``max_tokens`` image tokens (one 1024-px PixArt row is 4096 tokens). With ``checkpoint``
    (diffusers' gradient checkpointing) the backward recomputes each block's activations instead of keeping them
    all; what stays is every site's input until its gradient arrives (the weight term needs both). Cost: the
    model's forward (twice with ``checkpoint``) and backward per pass and sample, ``u^T (x - z_g)`` per Linear and
    shift, then per candidate a few passes over the site's weights and sampled rows, independent of the model's
    depth; nothing is kept between probes but the scores.
    """

    def __init__(self, ctx: Context, grouping: Grouping, *, n_timesteps: int = 6, batch: int = 8,
                 per_token: bool = False, samples: int = 2, act_rows: int = 1024, max_tokens: int = 2048,
                 checkpoint: bool = True, seed: int = 0) -> None:
        from ditq.calibration.methods.base import pick_probes

        self.ctx, self.per_token, self.samples, self.act_rows, self.seed = ctx, per_token, samples, act_rows, seed
        # image tokens per forward/backward pass (a row is never split: a 1024-px PixArt row is 4096 tokens). The
        # bench's PixArt-alpha-512 calibration, 2 rows of 1024 tokens per pass, peaked at 18.6 GB before checkpointing
        self.max_tokens = max_tokens
        # recompute each block's activations in the backward instead of keeping them all: the same scores, one
        # more forward per pass. PixArt-alpha-1024, one 4096-token row: 9.3 GB peak against 14.4 (glibc's mmap
        # threshold fixed; scripts/probes/fisher_memory.py)
        self.checkpoint = checkpoint
        self.inputs = pick_probes(ctx, n_timesteps, batch)
        self.probe_groups = [grouping.group_of(float(t[0])) for _, t, _ in self.inputs]

    def scores(self, candidates: dict[str, dict[Any, Candidate]]) -> dict[str, dict[Any, float]]:
        """Per site (name) and candidate key: the mean over probes of the model-output SQNR (dB) with only that
        site quantized as the candidate says, to first order."""
        from ditq.models.loading import make_denoiser

        ctx, samples = self.ctx, self.samples
        transformer = ctx.transformer
        assert transformer is not None  # pick_probes checked
        modules = dict(transformer.named_modules())
        sites = {s.name: s for s in ctx.sites if s.name in candidates}
        site_of = {lin: s for s in sites.values() for lin in s.linears}
        names = {id(modules[lin]): lin for lin in site_of}
        noise = {name: {key: [0.0] * len(self.inputs) for key in candidates[name]} for name in sites}
        variances: dict[tuple[str, Any, str], torch.Tensor | None] = {}
        gen = torch.Generator().manual_seed(self.seed)
        state: dict[str, Any] = {}  # the current probe and sample; per site its sampled rows, input gradients

        def weight(lin: str) -> torch.Tensor:
            return modules[lin].weight.detach().float()  # type: ignore[operator]

        def site_weight(site: Site, lin: str, s: torch.Tensor, rot: int) -> tuple[torch.Tensor, torch.Tensor]:
            spec = ctx.default_spec(site)
            return folded_weight(weight(lin), s, rot, w_bits=spec.w_bits, w_block=spec.w_block, fmt=spec.fmt)

        def step_variance(site: Site, key: Any, lin: str, s: torch.Tensor, rot: int) -> torch.Tensor | None:
            """``E[dW'^2]`` per output row and weight block [N, blocks] when it is constant on rotation blocks
            (integer grids), else None (computed per element where needed)."""
            if (site.name, key, lin) not in variances:
                spec = ctx.default_spec(site)
                block = spec.w_block or weight(lin).shape[1]
                var = None
                if spec.fmt == "int" and (not rot or block % rot == 0):
                    w, scale = site_weight(site, lin, s, rot)
                    var = (scale.square() / 12).reshape(w.shape[0], -1)  # rounding_variance of an integer grid
                variances[(site.name, key, lin)] = var
            return variances[(site.name, key, lin)]

        def weight_noise(site: Site, lin: str, u: torch.Tensor, x: torch.Tensor) -> None:
            """Every candidate's weight term for one Linear of ``site`` from its output gradient ``u`` [R, T, N]
            and input ``x`` [R, T, C] (R batch rows of T tokens). The gradient with respect to ``W diag(s)`` is
            ``u_r^T (x_r - z_g) / s`` per row r (rows are separate images: their terms add in power, and
            ``E[u_r u_r']`` is 0 across rows); one product per row and distinct shift (a site has two: the
            mid-range and none), then, where the step is constant on rotation blocks, every candidate of that
            shift from one contraction of ``sum_r (u_r^T (x_r - z_g))^2`` with its ``1 / s^2``."""
            i, group = state["probe"], self.probe_groups[state["probe"]]
            spec = ctx.default_spec(site)
            by_shift: dict[int, list[tuple[Any, torch.Tensor, torch.Tensor, int]]] = {}
            for key, (z, s, _, rot) in candidates[site.name].items():
                by_shift.setdefault(id(z), []).append((key, z, s, rot))
            for cands in by_shift.values():
                xs = x - cands[0][1][group]
                m2 = torch.zeros(u.shape[-1], x.shape[-1])  # sum_r (u_r^T (x_r - z_g))^2 [N, C]
                for r in range(u.shape[0]):  # a GEMM per row: faster on CPU than one batched product
                    m2.add_((u[r].T @ xs[r]).square_())
                n, c = m2.shape
                fast = []  # key, 1/s^2, variance [N, blocks]
                for key, _, s, rot in cands:
                    var = step_variance(site, key, lin, s, rot)
                    if var is not None:
                        fast.append((key, s.square().reciprocal(), var))
                        continue
                    w, scale = site_weight(site, lin, s, rot)
                    scale = scale.repeat_interleave(spec.w_block, dim=1) if spec.w_block else scale[:, None]
                    g2 = sum(rotate((u[r].T @ xs[r]) / s, rot).square() for r in range(u.shape[0]))
                    noise[site.name][key][i] += float((g2 * rounding_variance(w, scale, spec.fmt)).sum()) / samples
                if not fast:
                    continue
                nb = fast[0][2].shape[1]
                inv = torch.stack([f[1] for f in fast], 1).reshape(nb, c // nb, -1)  # [blocks, B, K]
                rows = torch.einsum("nbc,bck->nbk", m2.reshape(n, nb, c // nb), inv)  # [N, blocks, K]
                totals = (rows * torch.stack([f[2] for f in fast], -1)).sum((0, 1)) / samples
                for (key, *_), total in zip(fast, totals.tolist()):
                    noise[site.name][key][i] += total

        def act_noise(site: Site, x: torch.Tensor, g: torch.Tensor, weight_of_row: float) -> None:
            """``g`` [samples, rows, C]: the input gradients of the sampled rows ``x`` [rows, C]."""
            i, group = state["probe"], self.probe_groups[state["probe"]]
            spec = ctx.default_spec(site)
            g2 = g.square().mean(0)  # unrotated candidates: mean over samples of (g s)^2 is s^2 mean(g^2)
            for key, (z, s, sc, rot) in candidates[site.name].items():
                xp = rotate((x - z[group]) / s, rot)
                xq = (dynamic_fake_quant(xp, spec.a_bits) if self.per_token
                      else fake_quant(xp, float(sc[group]), spec.a_bits, spec.fmt))
                gp2 = rotate(g * s, rot).square().mean(0) if rot else g2 * s.square()
                noise[site.name][key][i] += weight_of_row * float((gp2 * (xq - xp).square()).sum())

        def by_row(t: torch.Tensor) -> torch.Tensor:
            """[R, T, C]: batch rows of tokens (a 2-D input: one token per row)."""
            t = t.detach().float()
            return t.reshape(t.shape[0], -1, t.shape[-1]) if t.dim() > 2 else t[:, None]

        def forward_hook(module: nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
            lin = names[id(module)]
            if lin in state["hooked"]:  # a checkpointed block recomputed in the backward: hooked in the forward
                return  # already (a hook on the recomputed output would never fire, and would keep its input)
            state["hooked"].add(lin)
            site = site_of[lin]
            x3 = by_row(args[0])
            x = x3.reshape(-1, x3.shape[-1])
            if site.name not in state["rows"]:
                rows = torch.randperm(x.shape[0], generator=gen)[: state["act_rows"]].sort().values
                state["rows"][site.name] = (rows, x.shape[0] / len(rows))
                state["grads"][site.name] = []

            def grad_hook(grad: torch.Tensor) -> None:
                u3 = by_row(grad)
                weight_noise(site, lin, u3, x3)
                rows, weight_of_row = state["rows"][site.name]
                part = state["partial"].setdefault(site.name, {})
                part[lin] = u3.reshape(-1, u3.shape[-1])[rows] @ weight(lin)
                if len(part) < len(site.linears):
                    return
                del state["partial"][site.name]
                state["grads"][site.name].append(sum(part.values()))
                if len(state["grads"][site.name]) == samples:
                    act_noise(site, x[rows], torch.stack(state["grads"].pop(site.name)), weight_of_row)

            if out.requires_grad:
                out.register_hook(grad_hook)

        handles = [modules[lin].register_forward_hook(forward_hook) for lin in site_of]
        params = list(transformer.parameters())
        flags = [p.requires_grad for p in params]
        was_training = transformer.training
        # diffusers' gradient checkpointing, turned on here unless the model already has it (and then back off)
        checkpoint = (self.checkpoint and getattr(transformer, "_supports_gradient_checkpointing", False)
                      and not getattr(transformer, "is_gradient_checkpointing", False))
        model = make_denoiser(transformer)
        ref_power = []
        bar = tqdm(total=len(self.inputs), desc="htg fisher criterion", disable=not ctx.progress, leave=False)
        try:
            if checkpoint:
                transformer.enable_gradient_checkpointing()  # type: ignore[operator]
            for p in params:
                p.requires_grad_(False)
            with caller_threads(ctx):  # forward and backward passes of the whole model
                for i, (x, t, cond) in enumerate(self.inputs):
                    # rows in passes of at most max_tokens image tokens (memory: every site's input stays until its
                    # gradient arrives); every term is a sum over rows, so the passes add up
                    per_pass = max(1, self.max_tokens // max(1, image_tokens(ctx, x)))
                    power = 0.0
                    for lo in range(0, x.shape[0], per_pass):
                        sl = slice(lo, lo + per_pass)
                        state.update(probe=i, rows={}, grads={}, partial={}, hooked=set(),
                                     act_rows=max(1, -(-self.act_rows * len(x[sl]) // x.shape[0])))
                        leaf = {k: v[sl].detach().float().requires_grad_(True) if v.is_floating_point() else v[sl]
                                for k, v in cond.items()}
                        with torch.enable_grad():
                            out = model.predict(x[sl].detach().float().requires_grad_(True), t[sl], leaf)
                            for k in range(samples):
                                out.backward(torch.randn(out.shape, generator=gen, dtype=out.dtype),
                                             retain_graph=k + 1 < samples)
                        power += float(out.detach().double().square().sum())
                        unfinished = [name for name in sites if name not in state["rows"]] + list(state["grads"])
                        if unfinished:
                            raise DitqError(f"the Fisher criterion got no gradient at site(s) "
                                            f"{', '.join(unfinished[:3])} in a model call; "
                                            "use alpha_criterion='output'")
                        del out
                    ref_power.append(max(power, 1e-30))
                    bar.update()
        finally:
            bar.close()
            for h in handles:
                h.remove()
            for p, f in zip(params, flags):
                p.requires_grad_(f)
            if checkpoint:
                transformer.disable_gradient_checkpointing()  # type: ignore[operator]
            transformer.train(was_training)
            state.clear()
        return {name: {key: sum(ratio_db(max(n / p, 1e-30)) for n, p in zip(per, ref_power)) / len(per)
                       for key, per in by_key.items()} for name, by_key in noise.items()}
