"""End-to-end scoring of one site's quantizer candidate: the model-output SQNR on the calibration probes with only
that site quantized (shift, smoothing scale, per-group activation scales and max-scaled weights as a recipe would
have them), every other Linear in float.

The local criterion (the quantized Linear's own output error on the reservoir) weighs every output channel alike
and ignores what the rest of the network does with the error; this one measures what the model output sees.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ditq.calibration.groups import Grouping
from ditq.calibration.methods.base import Context, ProbeEvaluator
from ditq.core.metrics import ratio_db
from ditq.core.quantizers import dynamic_fake_quant, fake_quant, fake_quant_weight, rotate, weight_scales
from ditq.core.sites import Site


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
