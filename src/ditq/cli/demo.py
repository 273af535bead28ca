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
    if not report["methods"]["htg"]["validation_passed"]:  # the baseline's verdict is reported, not gated
        from ditq.errors import CheckFailed

        raise CheckFailed(f"validation failed for htg; see {args.output}/onnx-htg/validation")
    return 0
