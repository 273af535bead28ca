from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from ditq.errors import CheckFailed

REPORT_KIND = "ditq.validation"
# the flag that sets each gate's floor, named in a failure
GATE_FLAGS = {("onnxrt-fp", "sqnr_db"): "--min-ref-sqnr", ("onnxrt-fp", "cosine"): "--min-ref-cosine",
              ("onnxrt-qdq", "sqnr_db"): "--min-sqnr", ("onnxrt-qdq", "cosine"): "--min-cosine"}


def run(args: argparse.Namespace) -> int:
    from ditq.api import validate
    from ditq.export.artifact import OnnxArtifact
    from ditq.validate.compare import Thresholds
    from ditq.validate.run import default_thresholds, failure_lines, format_report

    art = OnnxArtifact.load(Path(args.artifact))  # refuses a set whose recipe changed since the export
    out = Path(args.output) if args.output else art.root / "validation"
    reference = default_thresholds(art.precision)["onnxrt-fp"]  # follows the set's float precision
    if args.min_ref_sqnr is not None:
        reference = replace(reference, min_sqnr_db=args.min_ref_sqnr)
    if args.min_ref_cosine is not None:
        reference = replace(reference, min_cosine=args.min_ref_cosine)
    qdq = Thresholds(min_cosine=args.min_cosine, min_sqnr_db=args.min_sqnr)
    # the default report directory is validate's own: a re-run replaces it; an explicit -o follows the usual rule
    report = validate(art, args.output, steps=args.steps, thresholds={"onnxrt-fp": reference, "onnxrt-qdq": qdq},
                      trt=args.trt, force=args.force)
    print(format_report(report))
    print(f"report: {out / 'validation.json'}")
    if not report["passed"]:
        raise CheckFailed("; ".join(f"group {g['group']}: {', '.join(failure_lines(g, GATE_FLAGS))}"
                                    for g in report["groups"] if not g["passed"]))
    return 0
