"""Probe (issue 13): the clips HTG's MSE activation clip search picks, as a ratio of each site's and group's
calibration amax (1.0 = no clip), with the per-site output criterion otherwise as the default.
Usage: python scripts/probes/clip_ratios.py MODEL [CALIB_SEED]
"""

import sys
from collections import Counter

import torch
from _common import htg_solution

from ditq.calibration.methods.base import folded_amax

torch.set_num_threads(1)
src = sys.argv[1]
seed = int(sys.argv[2]) if len(sys.argv) > 2 else 1
_, ctx, sol = htg_solution(src, seed, alpha_criterion="output", act_clip_search=True)
ratios = []
for site in ctx.sites:
    st, shifts, smooth = ctx.stats[site.name], sol.shifts[site.name], sol.smooth[site.name]
    for g in range(sol.grouping.n_groups):
        amax = folded_amax(st, ctx.rows_of(sol.grouping, g), shifts[g], smooth)
        ratios.append(round(float(sol.act_scales[site.name][g]) * 127 / amax, 2))
print(f"{len(ratios)} (site, group) scales; clip ratio: count", dict(sorted(Counter(ratios).items())))
clipped = sum(r < 0.995 for r in ratios) / len(ratios)
print("median", sorted(ratios)[len(ratios) // 2], "share clipped", round(clipped, 2))
