from __future__ import annotations

import argparse
from pathlib import Path

from ditq.cli.args import UsageError, int_range, positive_float, positive_int


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("onnx_dir", help="ONNX directory from `ditq export`")
    p.add_argument("-o", "--output", required=True, help="engine directory to write")
    p.add_argument("--min-batch", type=positive_int, default=1,
                   help="smallest batch, CFG included (default: %(default)s)")
    p.add_argument("--opt-batch", type=positive_int, default=8, help="batch TensorRT tunes for (default: %(default)s)")
    p.add_argument("--max-batch", type=positive_int, default=32, help="largest batch (default: %(default)s)")
    p.add_argument("--workspace-gib", type=positive_float, default=4.0, help="workspace limit (default: %(default)s)")
    p.add_argument("--opt-level", type=int_range(0, 5), default=3,
                   help="builder optimization level 0-5 (default: %(default)s)")
    p.add_argument("--timing-cache", default=None, help="timing cache file to load and update (shared by builds)")
    p.add_argument("--force", action="store_true")


def check_args(args: argparse.Namespace) -> None:
    if not args.min_batch <= args.opt_batch <= args.max_batch:
        raise UsageError(f"batches must satisfy --min-batch <= --opt-batch <= --max-batch, got {args.min_batch}, "
                         f"{args.opt_batch}, {args.max_batch}")


def run(args: argparse.Namespace) -> int:
    from ditq.artifacts.onnx import OnnxArtifact
    from ditq.engines.build import BuildConfig, build_engines, memory_report

    config = BuildConfig(min_batch=args.min_batch, opt_batch=args.opt_batch, max_batch=args.max_batch,
                         workspace_gib=args.workspace_gib, opt_level=args.opt_level,
                         timing_cache=Path(args.timing_cache) if args.timing_cache else None, force=args.force)
    onnx = OnnxArtifact.load(Path(args.onnx_dir))
    art = build_engines(onnx, Path(args.output), config, progress=not args.quiet)
    print(f"engines: {art.root}  groups={len(art.groups)}  TensorRT {art.trt_version}  {art.device}  "
          f"batch {art.batch_range[0]}..{art.batch_range[1]}  ({art.seconds:.1f} s)")
    for g in art.groups:
        print(f"  {g.file}  timesteps {g.interval[0]}..{g.interval[1]}  {g.seconds:.1f} s")
    print(memory_report(art, onnx))
    return 0
