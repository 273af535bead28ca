from __future__ import annotations

import argparse
import sys
from pathlib import Path


def run(args: argparse.Namespace) -> int:
    from ditq.demo import DemoConfig, run_demo

    config = DemoConfig(model=args.model, steps=args.steps, samples=args.samples, eval_samples=args.eval_samples,
                        groups=args.groups, baseline=args.baseline, progress=not args.quiet)
    if not args.quiet:  # measured: 95 s wall on a 2-core AVX-512 CPU at the defaults (1.5 min CPU per method)
        minutes = "about 1.5-3 minutes" if args.baseline else "about 1-2 minutes"
        print(f"ditq demo: calibrate, export, validate and sample HTG{' and min-max' if args.baseline else ''} on "
              f"the {'bundled' if args.model == 'demo' else 'given'} model; {minutes} on 2 CPU cores", file=sys.stderr,
              flush=True)
    report = run_demo(Path(args.output), config, force=args.force)
    print((Path(args.output) / "report.md").read_text())
    print(f"done in {report['total_seconds']:.0f} s: {Path(args.output).resolve()}")
    if not report["methods"]["htg"]["validation_passed"]:  # the baseline's verdict is reported, not gated
        from ditq.errors import CheckFailed

        raise CheckFailed(f"validation failed for htg; see {args.output}/onnx-htg/validation")
    return 0
