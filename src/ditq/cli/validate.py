from __future__ import annotations

import argparse
from pathlib import Path

from ditq.errors import CheckFailed


def run(args: argparse.Namespace) -> int:
    from ditq.calibration.recipe import Recipe
    from ditq.export.artifact import OnnxArtifact
    from ditq.models.dit import load_model
    from ditq.validate.compare import Thresholds
    from ditq.validate.run import ValidateConfig, format_report, validate

    art = OnnxArtifact.load(Path(args.artifact))
    model = load_model(art.model["source"])
    recipe = Recipe.load(art.recipe_dir) if art.recipe_dir and art.recipe_dir.is_dir() else None
    out = Path(args.output) if args.output else art.root / "validation"
    config = ValidateConfig(steps=args.steps, thresholds={
        "onnxrt-qdq": Thresholds(min_cosine=args.min_cosine, min_sqnr_db=args.min_sqnr)})
    report = validate(art, model, recipe, out, config)
    print(format_report(report))
    print(f"report: {out / 'validation.json'}")
    if not report["passed"]:
        raise CheckFailed("; ".join(f"group {g['group']}: {', '.join(g['failures'])}"
                                    for g in report["groups"] if not g["passed"]))
    return 0
