from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from ditq.cli.args import finite_float, float_range, positive_int
from ditq.errors import CheckFailed

# the flag that sets each gate's floor, named in a failure
GATE_FLAGS = {("onnxrt-fp", "sqnr_db"): "--min-ref-sqnr", ("onnxrt-fp", "cosine"): "--min-ref-cosine",
              ("onnxrt-qdq", "sqnr_db"): "--min-sqnr", ("onnxrt-qdq", "cosine"): "--min-cosine"}


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("artifact", help="ONNX directory from `ditq export`")
    p.add_argument("-o", "--output", default=None,
                   help="report directory (default: ARTIFACT/validation, replaced by each run)")
    p.add_argument("--force", action="store_true", help="replace an existing report directory given with -o")
    p.add_argument("--steps", type=positive_int, default=50, help="sampler steps (default: %(default)s)")
    p.add_argument("--min-sqnr", type=finite_float, default=15.0,
                   help="QDQ graph SQNR floor in dB (default: %(default)s)")
    p.add_argument("--min-cosine", type=float_range(-1.0, 1.0), default=0.98,
                   help="QDQ graph cosine floor (default: %(default)s)")
    p.add_argument("--min-ref-sqnr", type=finite_float, default=None,
                   help="FP reference graph SQNR floor in dB (default: by the set's precision, fp32 60, fp16 30)")
    p.add_argument("--min-ref-cosine", type=float_range(-1.0, 1.0), default=None,
                   help="FP reference graph cosine floor (default: by the set's precision, fp32 0.99999, fp16 0.9995)")
    p.add_argument("--trt", metavar="ENGINE_DIR", default=None,
                   help="also run these TensorRT engines (`ditq build` of ARTIFACT) on the same feeds, same floors")


def run(args: argparse.Namespace) -> int:
    from ditq.api import validate, validate_failures
    from ditq.artifacts.onnx import OnnxArtifact
    from ditq.validation.compare import Thresholds
    from ditq.validation.run import default_thresholds, format_report

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
        raise CheckFailed(validate_failures(report, GATE_FLAGS))
    return 0
