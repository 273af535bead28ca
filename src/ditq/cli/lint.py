from __future__ import annotations

import argparse
from pathlib import Path

from ditq.errors import CheckFailed


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("onnx_dir", help="directory of .onnx files (or one file)")
    p.add_argument("--target", choices=("onnxruntime", "tensorrt-10", "tensorrt-11"), default=None,
                   help="whose rules: a TensorRT major (what it can build) or onnxruntime (placement rules only); "
                        "default: an exported set's own target, tensorrt-11 for other files")


def run(args: argparse.Namespace) -> int:
    from ditq.artifacts import MANIFEST
    from ditq.artifacts.lint import NEWEST_TENSORRT, format_violations, lint_dir, lint_file, lint_onnx_set
    from ditq.artifacts.onnx import OnnxArtifact

    path = Path(args.onnx_dir)
    if path.is_dir() and (path / MANIFEST).is_file():
        # an exported set: its files must match their manifest (a truncated weights.bin, a garbled graph) first
        results = lint_onnx_set(OnnxArtifact.load(path), args.target)
    else:
        target = args.target or NEWEST_TENSORRT
        results = lint_dir(path, target) if path.is_dir() else {path.name: lint_file(path, target)}
    print(format_violations(results))
    if any(results.values()):
        raise CheckFailed(f"{sum(map(len, results.values()))} TensorRT QDQ rule violations")
    return 0
