"""How closely HTG's Fisher criterion reproduces the per-site model-output criterion (docs/fisher_criterion.md).

Calibrates HTG (25 steps x 8 samples, local criterion: only the Context is wanted), builds every candidate of the
first SITES sites (shifted or not, every alpha, rotated or not), and scores each with both criteria on the same
probes. Per site: the rank correlation, the Fisher estimate minus the measured SQNR (mean, range), and the
measured SQNR lost by taking the Fisher pick. With --linearized, also the model's response to eps times each
site's error (scaled back by 1/eps^2) for a few candidates: how far first order is from the model itself.
Usage: python scripts/probes/fisher_agreement.py [MODEL] [SITES] [--linearized]
"""

import math
import sys
import time

import torch
from _common import htg_solution
from torch import nn

from ditq.calibration.methods.base import site_rotations
from ditq.calibration.methods.htg import ROTATION_AUTO, HTGConfig
from ditq.calibration.methods.site_probe import FisherScorer, GroupedSiteLinear, SiteScorer

torch.set_num_threads(1)
args = [a for a in sys.argv[1:] if not a.startswith("--")]
src = args[0] if args else "demo"
model, ctx, sol = htg_solution(src, 1, alpha_criterion="local")
sites = ctx.sites[: int(args[1])] if len(args) > 1 else ctx.sites
blocks = site_rotations(ctx, ROTATION_AUTO)
cfg = HTGConfig()
opts = {s.name: cfg._candidates(ctx, s, sol.grouping, blocks[s.name], search=False) for s in sites}
measured = SiteScorer(ctx, sol.grouping)
start = time.perf_counter()
fisher = FisherScorer(ctx, sol.grouping).scores({n: {k: (*v[:3], k[2]) for k, v in o.items()} for n, o in opts.items()})
print(f"Fisher scores of {sum(map(len, opts.values()))} candidates: {time.perf_counter() - start:.1f} s")


def rank_corr(a: list[float], b: list[float]) -> float:
    ra, rb = torch.tensor(a).argsort().argsort().double(), torch.tensor(b).argsort().argsort().double()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.square().sum() * rb.square().sum()).sqrt())


class Scaled(nn.Module):
    """The float Linear plus eps times the quantized one's error."""

    def __init__(self, quant: GroupedSiteLinear, linear: nn.Module, eps: float) -> None:
        super().__init__()
        self.quant, self.linear, self.eps = quant, linear, eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.linear(x)
        return y + self.eps * (self.quant(x) - y)


def linearized(site, z, s, sc, rot, eps=0.02):
    ev = measured.evaluator
    spec = ctx.default_spec(site)
    repl = {lin: Scaled(GroupedSiteLinear(ev.modules[lin], z, s, sc, w_bits=spec.w_bits, a_bits=spec.a_bits,
                                          w_block=spec.w_block, rotation=rot), ev.modules[lin], eps)
            for lin in site.linears}

    def point(i: int) -> None:
        for m in repl.values():
            m.quant.group = measured.probe_groups[i]

    ratios = ev.noise_ratios(repl, on_probe=point)
    return sum(-10 * math.log10(r / eps**2) for r in ratios) / len(ratios)


agree, regrets = 0, []
for site in sites:
    exact = {k: measured.score(site, *v[:3], rotation=k[2]) for k, v in opts[site.name].items()}
    est = fisher[site.name]
    diffs = [est[k] - exact[k] for k in exact]
    best, pick = max(exact, key=exact.__getitem__), max(est, key=est.__getitem__)
    agree += best == pick
    regrets.append(exact[best] - exact[pick])
    print(f"{site.name:40s} rank corr {rank_corr(list(exact.values()), [est[k] for k in exact]):.2f}  "
          f"Fisher - measured {sum(diffs) / len(diffs):+.2f} [{min(diffs):+.2f}, {max(diffs):+.2f}] dB  "
          f"measured pick {best} {exact[best]:.2f}, Fisher pick {pick} {exact[pick]:.2f}")
    if "--linearized" in sys.argv:
        for key in list(exact)[::7]:
            z, s, sc = opts[site.name][key][:3]
            print(f"    {key}: measured {exact[key]:.2f}, linearized {linearized(site, z, s, sc, key[2]):.2f}, "
                  f"Fisher {est[key]:.2f}")
print(f"same pick at {agree} of {len(sites)} sites; measured SQNR lost by the Fisher pick: mean "
      f"{sum(regrets) / len(regrets):.2f} dB, max {max(regrets):.2f} dB")
