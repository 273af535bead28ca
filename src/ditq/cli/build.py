from __future__ import annotations

import argparse
from pathlib import Path


def run(args: argparse.Namespace) -> int:
    from ditq.artifacts.onnx import OnnxArtifact
    from ditq.engines.build import BuildConfig, build_engines

    config = BuildConfig(min_batch=args.min_batch, opt_batch=args.opt_batch, max_batch=args.max_batch,
                         workspace_gib=args.workspace_gib, opt_level=args.opt_level,
                         timing_cache=Path(args.timing_cache) if args.timing_cache else None, force=args.force)
    art = build_engines(OnnxArtifact.load(Path(args.onnx_dir)), Path(args.output), config, progress=not args.quiet)
    print(f"engines: {art.root}  groups={len(art.groups)}  TensorRT {art.trt_version}  {art.device}  "
          f"batch {art.batch_range[0]}..{art.batch_range[1]}  ({art.seconds:.1f} s)")
    for g in art.groups:
        print(f"  {g.file}  timesteps {g.interval[0]}..{g.interval[1]}  {g.seconds:.1f} s")
    return 0
