"""How much HTG's timestep grouping moves with the calibration seed (statistics only; no alpha search).

    PYTHONPATH=src python scripts/grouping_seeds.py --model demo --steps 100 --samples 16 --seeds 0 1 2 3
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from typing import ClassVar


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="demo")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--samples", type=int, nargs="+", default=[16])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--groups", default="auto")
    p.add_argument("--window", type=int, nargs="+", default=[1], help="HTG group_window values to compare")
    args = p.parse_args(argv)

    import torch

    from ditq.calibration.calibrate import CalibConfig, calibrate
    from ditq.calibration.groups import SiteRange, group_timesteps
    from ditq.calibration.methods.base import Solution
    from ditq.calibration.methods.htg import HTGConfig
    from ditq.models.loading import load_model

    torch.set_num_threads(2)
    model = load_model(args.model)
    found: list = []
    captured: list = []

    def ranges(ctx):
        return [SiteRange(ctx.stats[s.name].ch_max.numpy(), ctx.stats[s.name].ch_min.numpy(),
                          max(ctx.stats[s.name].power, 1e-12)) for s in ctx.sites]

    @dataclass(frozen=True)
    class GroupingOnly(HTGConfig):
        needs_model: ClassVar[bool] = False

        def solve(self, ctx):  # the grouping of HTG, then minmax-like trivial scales (nothing else is measured)
            sol = HTGConfig.solve(HTGConfig(groups=self.groups, group_window=self.group_window,
                                            alpha_criterion="local", alphas=(0.5,),
                                            shift_choice=False, act_clip_search=False), ctx)
            found.append([list(i) for i in sol.grouping.intervals])
            captured.append(ctx)
            return Solution(sol.grouping, sol.shifts, sol.smooth, sol.act_scales, sol.alphas,
                            weight_clip_search=False)

    groups = args.groups if args.groups == "auto" else int(args.groups)
    for samples in args.samples:
        for seed in args.seeds:
            found.clear()
            calibrate(model, GroupingOnly(groups=groups, group_window=args.window[0]),
                      CalibConfig(steps=args.steps, samples=samples, seed=seed, progress=False))
            ctx = captured[0]  # the same statistics, grouped with every window
            for window in args.window:
                g = group_timesteps(ctx.timesteps, ranges(ctx), groups, num_train_timesteps=ctx.num_train_timesteps,
                                    bits=ctx.a_bits, max_groups=min(8, len(ctx.timesteps)), window=window)
                print(json.dumps({"samples": samples, "seed": seed, "window": window,
                                  "intervals": [list(i) for i in g.intervals]}), flush=True)
            captured.clear()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
