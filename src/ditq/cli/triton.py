"""``ditq triton``: a Triton Inference Server model repository for an ONNX or engine set."""

from __future__ import annotations

import argparse
from pathlib import Path

from ditq.cli.args import int_range


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("artifact", help="an ONNX set (`ditq export`) or an engine set (`ditq build`)")
    p.add_argument("-o", "--output", required=True, help="model repository directory to write")
    p.add_argument("--name", default="transformer",
                   help="the router model's name; group models are NAME_group_G (default: %(default)s)")
    p.add_argument("--max-batch-size", type=int_range(1, 4096), default=None,
                   help="Triton's max_batch_size (default: the engines' profile maximum; 16 for an ONNX set)")
    p.add_argument("--queue-delay-us", type=int_range(0, 10_000_000), default=2000,
                   help="dynamic batching's max_queue_delay_microseconds (default: %(default)s)")
    p.add_argument("--instances", type=int_range(1, 64), default=1,
                   help="instance_group count per model (default: %(default)s)")
    p.add_argument("--force", action="store_true")


def run(args: argparse.Namespace) -> int:
    from ditq.serve.triton import write_repository

    out = write_repository(Path(args.artifact), Path(args.output), name=args.name,
                           max_batch_size=args.max_batch_size, queue_delay_us=args.queue_delay_us,
                           instances=args.instances, force=args.force)
    print(f"triton: {out}  router={args.name}  (tritonserver --model-repository {out})")
    return 0
