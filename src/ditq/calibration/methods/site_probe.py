"""End-to-end scoring of one site's quantizer candidate: the model-output SQNR on the calibration probes with only
that site quantized (shift, smoothing scale, per-group activation scales and max-scaled weights as a recipe would
have them), every other Linear in float.

The local criterion (the quantized Linear's own output error on the reservoir) weighs every output channel alike
and ignores what the rest of the network does with the error; this one measures what the model output sees.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ditq.calibration.groups import Grouping
from ditq.calibration.methods.base import Context, ProbeEvaluator
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
        ws = rotate(w * smooth, rotation)
        scale = weight_scales(ws, w_bits, search=False, block=w_block, fmt=fmt)
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
                 per_token: bool = False) -> None:
        self.ctx, self.per_token = ctx, per_token
        self.evaluator = ProbeEvaluator(ctx, n_timesteps=n_timesteps, batch=batch)
        self.probe_groups = [grouping.group_of(t) for t in self.evaluator.timesteps]

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
            shifts, smooth, act_scales = choices[site.name]
            spec = self.ctx.default_spec(site)
            for lin in site.linears:
                repl[lin] = GroupedSiteLinear(self.evaluator.modules[lin], shifts, smooth,  # type: ignore[arg-type]
                                              act_scales, w_bits=spec.w_bits, a_bits=spec.a_bits,
                                              w_block=spec.w_block, fmt=spec.fmt,
                                              rotation=(rotations or {}).get(site.name, 0),
                                              per_token=self.per_token)

        def point(i: int) -> None:
            for m in repl.values():
                m.group = self.probe_groups[i]

        ratios = self.evaluator.noise_ratios(repl, on_probe=point)
        return sum(ratio_db(max(r, 1e-30)) for r in ratios) / len(ratios)



# "auto" runs the per-site model-output criterion while its estimated cost stays within this many multiply-adds (about
# 15 minutes on one CPU core: the patches DiT's 5.5e12 took about 4.5), and the Fisher criterion beyond that
OUTPUT_CRITERION_BUDGET_MACS = 2e13


def output_criterion_macs(ctx: Context, scorings: int, n_timesteps: int, batch: int) -> float:
    """Multiply-adds of the quantized Linears in ``scorings`` whole-model runs on the criterion's probes (attention
    and the rest left out): what the per-site model-output criterion costs."""
    from ditq.calibration.methods.base import pick_probes

    probes = pick_probes(ctx, n_timesteps, batch)
    patch = int(getattr(getattr(ctx.transformer, "config", None), "patch_size", None) or 1)
    tokens = sum(x.shape[0] * x[0, 0].numel() // patch**2 for x, _, _ in probes)  # image tokens, every probe row
    params = sum(w.numel() for ws in ctx.weights.values() for w in ws)
    return float(scorings) * tokens * params


def auto_criterion(ctx: Context, scorings: int, n_timesteps: int, batch: int) -> str:
    """``"output"`` where its ``scorings`` whole-model runs fit ``OUTPUT_CRITERION_BUDGET_MACS``, else ``"fisher"``
    (logged)."""
    macs = output_criterion_macs(ctx, scorings, n_timesteps, batch)
    if macs <= OUTPUT_CRITERION_BUDGET_MACS:
        return "output"
    log.info("alpha criterion: fisher (the per-site model-output criterion would run %d whole-model scorings, "
             "%.1e multiply-adds, above the %.0e budget)", scorings, macs, OUTPUT_CRITERION_BUDGET_MACS)
    return "fisher"


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
    - weights, per element: ``sum G'^2 E[dW'^2]`` with ``G' = ((u^T x - (sum u) z_g^T) / s) R``, the gradient with
      respect to ``W'`` summed over all of the probe's tokens and rows (one weight error reaches every token), and
      ``E[dW'^2] = step^2 / 12``, the expected rounding error of the max-scaled grid: the deployed weights are
      rounded otherwise anyway (clip search, GPTQ). ``R`` is orthogonal within blocks, so with integer steps
      constant on whole rotation blocks the sum needs no rotation of ``G'``.
    An earlier form, the diagonal in the Linears' output space (``u^2 e^2``, BRECQ's weighting), read 2-5 dB too
    little noise at qkv and fc1 on the demo DiT, whose output-channel errors are correlated; this one is within
    ~0.5 dB of the model's linearized response there (and the linearization within 0.05 dB of the model's own).
    Cost: the model's forward and backward per probe and sample, ``u^T x`` per Linear, then per candidate a few
    passes over the site's weights and sampled rows, independent of the model's depth; nothing is kept between
    probes but the scores. The probes and their groups are ``SiteScorer``'s.
    """

    def __init__(self, ctx: Context, grouping: Grouping, *, n_timesteps: int = 6, batch: int = 8,
                 per_token: bool = False, samples: int = 2, act_rows: int = 1024, seed: int = 0) -> None:
        from ditq.calibration.methods.base import pick_probes

        self.ctx, self.per_token, self.samples, self.act_rows, self.seed = ctx, per_token, samples, act_rows, seed
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

        def step_variance(site: Site, key: Any, lin: str, s: torch.Tensor, rot: int) -> torch.Tensor | None:
            """``E[dW'^2]`` per output row and weight block [N, blocks] when it is constant on rotation blocks
            (integer grids), else None (computed per element where needed)."""
            if (site.name, key, lin) not in variances:
                spec = ctx.default_spec(site)
                block = spec.w_block or weight(lin).shape[1]
                var = None
                if spec.fmt == "int" and (not rot or block % rot == 0):
                    w = rotate(weight(lin) * s, rot)
                    scale = weight_scales(w, spec.w_bits, search=False, block=spec.w_block, fmt=spec.fmt)
                    var = (scale.square() / 12).reshape(w.shape[0], -1)  # rounding_variance of an integer grid
                variances[(site.name, key, lin)] = var
            return variances[(site.name, key, lin)]

        def weight_noise(site: Site, lin: str, m: torch.Tensor, u_sum: torch.Tensor) -> None:
            """``m = u^T x`` [N, C] and ``u_sum`` [N] (float64) of one Linear of ``site``: every candidate's weight
            term. Where the step is constant on rotation blocks, ``sum_c ((m - u_sum z^T) / s)^2`` over each
            weight block is expanded (``m^2 / s^2 - 2 u_sum m z / s^2 + u_sum^2 z^2 / s^2``) and taken for all those
            candidates in two matrix products (float64: the shifted gradient is a difference of near-equal terms)."""
            i, group = state["probe"], self.probe_groups[state["probe"]]
            spec = ctx.default_spec(site)
            n, c = m.shape
            fast: list[tuple[Any, torch.Tensor, torch.Tensor, torch.Tensor]] = []  # key, 1/s^2, z/s^2, variance
            for key, (z, s, _, rot) in candidates[site.name].items():
                var = step_variance(site, key, lin, s, rot)
                inv = s.double().square().reciprocal()
                if var is not None:
                    fast.append((key, inv, z[group].double() * inv, var.double()))
                    continue
                p = ((m - u_sum[:, None] * z[group].double()) / s.double()).float()  # gradient wrt W diag(s)
                w = rotate(weight(lin) * s, rot)
                scale = weight_scales(w, spec.w_bits, search=False, block=spec.w_block, fmt=spec.fmt)
                scale = scale.repeat_interleave(spec.w_block, dim=1) if spec.w_block else scale[:, None]
                total = float((rotate(p, rot).square() * rounding_variance(w, scale, spec.fmt)).sum())
                noise[site.name][key][i] += total / samples
            if not fast:
                return
            nb = fast[0][3].shape[1]
            inv = torch.stack([f[1] for f in fast], 1).reshape(nb, c // nb, -1)  # [blocks, B, K]
            zinv = torch.stack([f[2] for f in fast], 1).reshape(nb, c // nb, -1)
            zz = (torch.stack([f[2] * f[2] / f[1] for f in fast], 1)).reshape(nb, c // nb, -1).sum(1)  # z^2/s^2
            mb = m.reshape(n, nb, c // nb)
            rows = (torch.einsum("nbc,bck->nbk", mb.square(), inv)
                    - 2 * u_sum[:, None, None] * torch.einsum("nbc,bck->nbk", mb, zinv)
                    + u_sum.square()[:, None, None] * zz[None])  # [N, blocks, K]
            var = torch.stack([f[3] for f in fast], -1)  # [N, blocks, K]
            totals = (rows.clamp_min(0) * var).sum((0, 1)) / samples
            for (key, *_), total in zip(fast, totals.tolist()):
                noise[site.name][key][i] += total

        def act_noise(site: Site, x: torch.Tensor, g: torch.Tensor, weight_of_row: float) -> None:
            """``g`` [samples, rows, C]: the input gradients of the sampled rows ``x`` [rows, C]."""
            i, group = state["probe"], self.probe_groups[state["probe"]]
            spec = ctx.default_spec(site)
            for key, (z, s, sc, rot) in candidates[site.name].items():
                xp = rotate((x - z[group]) / s, rot)
                xq = (dynamic_fake_quant(xp, spec.a_bits) if self.per_token
                      else fake_quant(xp, float(sc[group]), spec.a_bits, spec.fmt))
                gp2 = rotate(g * s, rot).square().mean(0)
                noise[site.name][key][i] += weight_of_row * float((gp2 * (xq - xp).square()).sum())

        def forward_hook(module: nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
            lin = names[id(module)]
            site = site_of[lin]
            x = args[0].detach()
            x = x.reshape(-1, x.shape[-1]).float()
            if site.name not in state["rows"]:
                rows = torch.randperm(x.shape[0], generator=gen)[: self.act_rows].sort().values
                state["rows"][site.name] = (rows, x.shape[0] / len(rows))
                state["grads"][site.name] = []

            def grad_hook(grad: torch.Tensor) -> None:
                u = grad.detach().reshape(-1, grad.shape[-1]).float()
                u64 = u.double()
                weight_noise(site, lin, u64.T @ x.double(), u64.sum(0))
                rows, weight_of_row = state["rows"][site.name]
                part = state["partial"].setdefault(site.name, {})
                part[lin] = u[rows] @ weight(lin)
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
        model = make_denoiser(transformer)
        ref_power = []
        threads = torch.get_num_threads()
        bar = tqdm(total=len(self.inputs), desc="htg fisher criterion", disable=not ctx.progress, leave=False)
        try:
            torch.set_num_threads(max(threads, ctx.threads))  # forward and backward passes of the whole model
            for p in params:
                p.requires_grad_(False)
            for i, (x, t, cond) in enumerate(self.inputs):
                state.update(probe=i, rows={}, grads={}, partial={})
                leaf = {k: v.detach().float().requires_grad_(True) if v.is_floating_point() else v
                        for k, v in cond.items()}
                with torch.enable_grad():
                    out = model.predict(x.detach().float().requires_grad_(True), t, leaf)
                    for k in range(samples):
                        out.backward(torch.randn(out.shape, generator=gen, dtype=out.dtype),
                                     retain_graph=k + 1 < samples)
                ref_power.append(float(out.detach().double().square().sum().clamp_min(1e-30)))
                bar.update()
                unfinished = [name for name in sites if name not in state["rows"]] + list(state["grads"])
                if unfinished:
                    raise DitqError(f"the Fisher criterion got no gradient at site(s) {', '.join(unfinished[:3])} "
                                    "in a model call; use alpha_criterion='output'")
        finally:
            bar.close()
            torch.set_num_threads(threads)
            for h in handles:
                h.remove()
            for p, f in zip(params, flags):
                p.requires_grad_(f)
            transformer.train(was_training)
            state.clear()
        return {name: {key: sum(ratio_db(max(n / p, 1e-30)) for n, p in zip(per, ref_power)) / len(per)
                       for key, per in by_key.items()} for name, by_key in noise.items()}
