from __future__ import annotations

import argparse
from pathlib import Path

from ditq.artifacts.outputs import staging_dir
from ditq.cli.args import positive_int, seed_int
from ditq.errors import DitqError


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", required=True, help="model directory to write")
    p.add_argument("--seed", type=seed_int, default=0)
    p.add_argument("--train-steps", type=positive_int, default=None,
                   help="optimizer steps (default: the shipped recipe)")
    p.add_argument("--arch", choices=("dit", "pixart"), default="dit",
                   help="dit: the bundled demo model; pixart: a tiny caption-conditioned PixArt (not bundled)")
    p.add_argument("--dataset", choices=("digits", "patches"), default="digits",
                   help="digits: sklearn's digits (16x16x1, 10 classes); patches: 32x32 colour crops of sklearn's "
                        "two sample photos, 8 classes, a 4.6M-parameter DiT (--arch dit only; not bundled)")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="torch threads for --dataset patches (default 2; the weights depend on it)")
    p.add_argument("--force", action="store_true")


def run(args: argparse.Namespace) -> int:
    kwargs = {"steps": args.train_steps} if args.train_steps else {}
    if args.dataset == "patches" and args.arch != "dit":
        raise DitqError(f"--dataset patches trains a DiT only, not --arch {args.arch}; drop --arch or use "
                        "--dataset digits")
    if args.threads and args.dataset != "patches":
        raise DitqError(f"--threads applies to --dataset patches only (the digits models fix 2 threads); drop "
                        f"--threads {args.threads}")
    with staging_dir(Path(args.output), kind="ditq.trained-model", force=args.force) as tmp:
        if args.dataset == "patches":
            from ditq.testbed.patches import train_patches

            result = train_patches(tmp, seed=args.seed, progress=not args.quiet, threads=args.threads, **kwargs)
        elif args.arch == "pixart":
            from ditq.testbed.pixart_digits import train_pixart_digits

            result = train_pixart_digits(tmp, seed=args.seed, progress=not args.quiet, **kwargs)
        else:
            from ditq.testbed.demo import train_demo

            result = train_demo(tmp, seed=args.seed, progress=not args.quiet, **kwargs)
    print(f"{args.arch} {args.dataset} model: {args.output}  {result}")
    return 0
