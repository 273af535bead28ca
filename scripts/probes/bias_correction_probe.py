"""Teacher-forced probe (issue 13), the prototype of ``CalibConfig.bias_correction``: HTG (global alpha criterion,
round-to-nearest weights) with and without a per-group bias correction estimated on the calibration reservoir;
model-output SQNR on 12 calls x 16 rows, every site quantized. Usage: python scripts/probes/bias_correction_probe.py
MODEL SEED [W_BITS]
"""

import sys

import torch.nn.functional as F
from _common import htg_solution

import ditq.calibration.methods.site_probe as sp
from ditq.calibration.methods.site_probe import GroupedSiteLinear, SiteScorer
from ditq.core.quantizers import fake_quant

src, seed, wb = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 8
model, ctx, sol = htg_solution(src, seed, wb)
G = len(sol.grouping.segments)
site_of = {lin: s for s in ctx.sites for lin in s.linears}


class BC(GroupedSiteLinear):
    def __init__(self, linear, shifts, smooth, act_scales, **kw):
        super().__init__(linear, shifts, smooth, act_scales, **kw)
        name = [n for n, m in scorer.evaluator.modules.items() if m is linear][0]
        st = ctx.stats[site_of[name].name]
        w = linear.weight.detach().float()
        for g in range(G):
            x = st.reservoir[ctx.rows_of(sol.grouping, g)].reshape(-1, st.reservoir.shape[-1]).float()
            ref = x @ w.T
            q = (
                F.linear(
                    fake_quant((x - self.shifts[g]) / self.smooth, float(self.act_scales[g]), self.a_bits, "int"),
                    self.weight,
                )
                + self.shifts[g] @ w.T
            )
            self.biases[g] = self.biases[g] - (q - ref).mean(0)


scorer = SiteScorer(ctx, sol.grouping, n_timesteps=12, batch=16)
shared = {s.name: (sol.shifts[s.name], sol.smooth[s.name], sol.act_scales[s.name]) for s in ctx.sites}
base = scorer.score_all(shared)
sp.GroupedSiteLinear = BC
bc = scorer.score_all(shared)
print(f"{src} seed {seed} W{wb}: base {base:.2f} dB  bias-corrected {bc:.2f} dB  diff {bc - base:+.2f}")
