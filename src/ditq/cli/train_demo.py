from __future__ import annotations

import argparse
from pathlib import Path

from ditq.artifacts.outputs import staging_dir
from ditq.cli.args import positive_int, seed_int


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", required=True, help="model directory to write")
    p.add_argument("--seed", type=seed_int, default=0)
    p.add_argument("--train-steps", type=positive_int, default=None,
                   help="optimizer steps (default: the shipped recipe)")
    p.add_argument("--arch", choices=("dit", "pixart"), default="dit",
                   help="dit: the bundled demo model; pixart: a tiny caption-conditioned PixArt (not bundled)")
    p.add_argument("--force", action="store_true")


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
