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
    args = p.parse_args(argv)

    import torch

    from ditq.calibration.calibrate import CalibConfig, calibrate
    from ditq.calibration.methods.base import Solution
    from ditq.calibration.methods.htg import HTGConfig
    from ditq.models.loading import load_model

    torch.set_num_threads(2)
    model = load_model(args.model)
    found: list = []

    @dataclass(frozen=True)
    class GroupingOnly(HTGConfig):
        needs_model: ClassVar[bool] = False

        def solve(self, ctx):  # the grouping of HTG, then minmax-like trivial scales (nothing else is measured)
            sol = HTGConfig.solve(HTGConfig(groups=self.groups, alpha_criterion="local", alphas=(0.5,),
                                            shift_choice=False, act_clip_search=False), ctx)
            found.append([list(i) for i in sol.grouping.intervals])
            return Solution(sol.grouping, sol.shifts, sol.smooth, sol.act_scales, sol.alphas,
                            weight_clip_search=False)

    groups = args.groups if args.groups == "auto" else int(args.groups)
    for samples in args.samples:
        for seed in args.seeds:
            found.clear()
            calibrate(model, GroupingOnly(groups=groups), CalibConfig(steps=args.steps, samples=samples, seed=seed,
                                                                     progress=False))
            print(json.dumps({"samples": samples, "seed": seed, "intervals": found[0]}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
