from __future__ import annotations

import argparse
from pathlib import Path

from ditq.artifacts.outputs import staging_dir


def run(args: argparse.Namespace) -> int:
    kwargs = {"steps": args.train_steps} if args.train_steps else {}
    with staging_dir(Path(args.output), kind="ditq.trained-model", force=args.force) as tmp:
        if args.arch == "pixart":
            from ditq.testbed.pixart_digits import train_pixart_digits

            result = train_pixart_digits(tmp, seed=args.seed, progress=not args.quiet, **kwargs)
        else:
            from ditq.testbed.demo import train_demo

            result = train_demo(tmp, seed=args.seed, progress=not args.quiet, **kwargs)
    print(f"{args.arch} digits model: {args.output}  {result}")
    return 0
