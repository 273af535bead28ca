from __future__ import annotations

import argparse
from pathlib import Path

from ditq.errors import CheckFailed


def run(args: argparse.Namespace) -> int:
    from ditq.export.lint import format_violations, lint_dir, lint_file

    path = Path(args.onnx_dir)
    results = lint_dir(path) if path.is_dir() else {path.name: lint_file(path)}
    print(format_violations(results))
    if any(results.values()):
        raise CheckFailed(f"{sum(map(len, results.values()))} TensorRT QDQ rule violations")
    return 0
