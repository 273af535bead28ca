from __future__ import annotations

import argparse
from pathlib import Path

from ditq.artifacts import staging_dir


def run(args: argparse.Namespace) -> int:
    from ditq.calibration.calibrate import CalibConfig, calibrate
    from ditq.calibration.methods import method_config
    from ditq.errors import DitqError
    from ditq.models.dit import load_model

    if args.method != "htg" and args.groups not in ("auto", 1):
        raise DitqError(f"--groups applies to --method htg; {args.method} always uses one group")
    params = {"groups": args.groups} if args.method == "htg" else {}
    method = method_config(args.method, **params)
    config = CalibConfig(steps=args.steps, samples=args.samples, cfg_scale=args.cfg, seed=args.seed,
                         scheduler=args.scheduler, progress=not args.quiet)
    out = Path(args.output)
    with staging_dir(out, force=args.force) as tmp:  # refuse an existing output before the long work
        model = load_model(args.model)
        recipe = calibrate(model, method, config)
        recipe.save(tmp)
    print(f"recipe: {out}  method={recipe.method}  groups={recipe.num_groups}  "
          f"intervals={[g.interval for g in recipe.groups]}  ({recipe.calibration['seconds']:.1f} s)")
    return 0
