"""Teacher-forced probe (issue 13): HTG with one smoothing scale per site (shared by the groups, weights shared) vs
one per group (weights differ per group), same alphas, shifts and clip search; model-output SQNR on 12 calibration
calls x 16 rows, every site quantized (nearest weights). HTG calibrated with the global alpha criterion.
Usage: python scripts/probes/pergroup_smoothing.py MODEL SEED [W_BITS]
"""

import sys

import torch
import torch.nn.functional as F
from _common import htg_solution

import ditq.calibration.methods.site_probe as sp
from ditq.calibration.methods.base import act_scales_for, pooled_range
from ditq.calibration.methods.site_probe import GroupedSiteLinear, SiteScorer
from ditq.calibration.methods.smoothquant import smoothing_scale
from ditq.core.quantizers import fake_quant, fake_quant_weight, weight_scales

src, seed, wb = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 8
model, ctx, sol = htg_solution(src, seed, wb)
G = len(sol.grouping.segments)


class PG(GroupedSiteLinear):
    def __init__(self, linear, shifts, smooth, act_scales, **kw):
        super().__init__(linear, shifts, smooth[0], act_scales, **kw)
        w = linear.weight.detach().float()
        self.ws = []
        for g in range(G):
            ws = w * smooth[g]
            sc = weight_scales(ws, kw["w_bits"], search=False, block=kw["w_block"])
            self.ws.append(fake_quant_weight(ws, sc, kw["w_bits"], "int"))
        self.sm = smooth

    def forward(self, x):
        g = self.group
        x = (x - self.shifts[g]) / self.sm[g]
        return F.linear(fake_quant(x, float(self.act_scales[g]), self.a_bits, "int"), self.ws[g], self.biases[g])


scorer = SiteScorer(ctx, sol.grouping, n_timesteps=12, batch=16)
shared = {s.name: (sol.shifts[s.name], sol.smooth[s.name], sol.act_scales[s.name]) for s in ctx.sites}
print("groups", sol.grouping.intervals, "alphas", sorted(set(map(str, sol.alphas.values()))))
base = scorer.score_all(shared)
per = {}


def w_of(site):
    return torch.cat(ctx.weights[site.name]).abs().amax(0)


for site in ctx.sites:
    al = sol.alphas[site.name]
    z = sol.shifts[site.name]
    if al is None or (sol.smooth[site.name] == 1).all():
        per[site.name] = (z, torch.stack([sol.smooth[site.name]] * G), sol.act_scales[site.name])
        continue
    st = ctx.stats[site.name]
    sg, sc = [], []
    for g in range(G):
        hi, lo = pooled_range(st, ctx.rows_of(sol.grouping, g))
        a = torch.maximum(hi - z[g], z[g] - lo)
        sg.append(smoothing_scale(a, w_of(site), al))
    sg = torch.stack(sg)
    for g in range(G):
        s_all, _ = act_scales_for(ctx, site, sol.grouping, z, sg[g], search=False)  # amax, as HTG's default
        sc.append(s_all[g])
    per[site.name] = (z, sg, torch.stack(sc))
# score with per-group smoothing: patch the replacement class
sp.GroupedSiteLinear = PG
pg = scorer.score_all(per)
print(f"seed {seed} W{wb}: shared {base:.2f} dB  per-group s {pg:.2f} dB  diff {pg - base:+.2f}")
