from __future__ import annotations

import argparse
from pathlib import Path

from ditq.cli.args import UsageError
from ditq.errors import CheckFailed


def check_opset(opset: int) -> None:
    """The parser bounds --opset by what the exporter handles; the installed onnx may know fewer."""
    import onnx

    if opset > (newest := onnx.defs.onnx_opset_version()):
        raise UsageError(f"--opset {opset} is newer than the installed onnx {onnx.__version__} knows ({newest}); "
                         f"use --opset <= {newest} or upgrade onnx")


def run(args: argparse.Namespace) -> int:
    from ditq.calibration.recipe import Recipe
    from ditq.export.lint import format_violations, lint_dir
    from ditq.export.onnx_export import export_onnx
    from ditq.models.dit import load_model

    check_opset(args.opset)
    recipe = Recipe.load(Path(args.recipe))
    model = load_model(args.model or recipe.model_source)
    art = export_onnx(model, recipe, Path(args.output), recipe_dir=Path(args.recipe), opset=args.opset,
                      precision=args.precision,
                      force=args.force, progress=not args.quiet)
    results = lint_dir(art.root)
    print(f"onnx: {art.root}  groups={len(art.groups)}  ({art.seconds:.1f} s)")
    if recipe.dynamic_activations:
        # a dynamically quantized GEMM has a weight DQ but a float-op fake-quant on its input: expected here
        results = {f: [v for v in vs if v.rule != "gemm-both-inputs"] for f, vs in results.items()}
        print(f"note: method {recipe.method!r} quantizes activations dynamically (at run time): this ONNX set runs "
              "on ONNX Runtime and the torch backend but cannot become TensorRT INT8 engines (`ditq build` refuses "
              "it; TensorRT needs static activation scales). Lint below skips the expected gemm-both-inputs rule.")
    if any(recipe.linear_spec(lin).w_bits == 4 for site in recipe.sites for lin in site.linears):
        print("note: INT4 weights: TensorRT runs W4A8 as INT4-weight dequantization + FP16 GEMMs (a memory win, "
              "not a compute win); it has no INT4 x INT8 GEMM.")
    print(format_violations(results))
    if any(results.values()):
        raise CheckFailed(f"the exported graphs break TensorRT's QDQ rules; see `ditq lint {art.root}`")
    return 0
