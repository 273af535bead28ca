"""Teacher-forced probe (issue 13): HTG's locally searched activation clips vs a per-site end-to-end choice of a
multiplier on them (0.85/1/1.15/1.3, each site scored alone by the model-output criterion on 6 x 8 probes, then
all together on 12 x 16). Usage: python scripts/probes/e2e_act_clip.py MODEL SEED
"""

import sys

from _common import htg_solution

from ditq.calibration.methods.site_probe import SiteScorer

src, seed = sys.argv[1], int(sys.argv[2])
model, ctx, sol = htg_solution(src, seed)
fit = SiteScorer(ctx, sol.grouping, n_timesteps=6, batch=8)
held = SiteScorer(ctx, sol.grouping, n_timesteps=12, batch=16)
base = {s.name: (sol.shifts[s.name], sol.smooth[s.name], sol.act_scales[s.name]) for s in ctx.sites}
chosen = {}
for site in ctx.sites:
    z, s, a = base[site.name]
    best = max((0.85, 1.0, 1.15, 1.3), key=lambda f: fit.score(site, z, s, a * f))
    chosen[site.name] = (z, s, a * best)
    print(site.name, best, flush=True)
b, c = held.score_all(base), held.score_all(chosen)
print(f"{src} seed {seed}: local clip {b:.2f} dB  end-to-end clip {c:.2f} dB  diff {c - b:+.2f}")
