from __future__ import annotations

import argparse
from pathlib import Path

from ditq.artifacts import staging_dir


def run(args: argparse.Namespace) -> int:
    from ditq.models.demo import train_demo

    kwargs = {"steps": args.train_steps} if args.train_steps else {}
    with staging_dir(Path(args.output), force=args.force) as tmp:
        result = train_demo(tmp, seed=args.seed, progress=not args.quiet, **kwargs)
    print(f"demo model: {args.output}  {result}")
    return 0
