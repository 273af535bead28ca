from __future__ import annotations

import argparse
from pathlib import Path

from ditq.errors import CheckFailed


def run(args: argparse.Namespace) -> int:
    from ditq.calibration.recipe import Recipe
    from ditq.export.lint import format_violations, lint_dir
    from ditq.export.onnx_export import export_onnx
    from ditq.models.dit import load_model

    recipe = Recipe.load(Path(args.recipe))
    model = load_model(args.model or recipe.model_source)
    art = export_onnx(model, recipe, Path(args.output), recipe_dir=Path(args.recipe), opset=args.opset,
                      precision=args.precision,
                      force=args.force, progress=not args.quiet)
    results = lint_dir(art.root)
    print(f"onnx: {art.root}  groups={len(art.groups)}  ({art.seconds:.1f} s)")
    print(format_violations(results))
    if any(results.values()):
        raise CheckFailed(f"the exported graphs break TensorRT's QDQ rules; see `ditq lint {art.root}`")
    return 0
