from __future__ import annotations

import argparse
from pathlib import Path


def run(args: argparse.Namespace) -> int:
    from ditq.demo import DemoConfig, run_demo

    config = DemoConfig(model=args.model, steps=args.steps, samples=args.samples, eval_samples=args.eval_samples,
                        groups=args.groups, baseline=args.baseline, progress=not args.quiet)
    report = run_demo(Path(args.output), config, force=args.force)
    print((Path(args.output) / "report.md").read_text())
    print(f"done in {report['total_seconds']:.0f} s: {Path(args.output).resolve()}")
    failed = [m for m, r in report["methods"].items() if not r["validation_passed"]]
    if failed:
        from ditq.errors import CheckFailed

        raise CheckFailed(f"validation failed for {', '.join(failed)}; see {args.output}/onnx-*/validation")
    return 0
