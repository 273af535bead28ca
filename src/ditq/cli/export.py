from __future__ import annotations

import argparse
from pathlib import Path

from ditq.cli.args import UsageError, int_range

# --opset: the dynamo exporter needs >= 18 and FP16 Q/DQ scales 19; onnx's version converter (onnx 1.23, torch
# 2.13) fails on the Attention op above 25. `ditq export` also refuses an opset the installed onnx does not know.
OPSETS = (19, 25)


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", help="recipe directory from `ditq calibrate`")
    p.add_argument("-o", "--output", required=True, help="ONNX directory to write")
    p.add_argument("--model", default=None, help="model directory (default: the one the recipe names)")
    p.add_argument("--opset", type=int_range(*OPSETS), default=21,
                   help=f"ONNX opset, {OPSETS[0]}-{OPSETS[1]} (default: %(default)s)")
    p.add_argument("--precision", choices=("fp32", "fp16"), default="fp32",
                   help="float type outside INT8 (fp16 for TensorRT's strongly typed networks; fp32 for CPU speed)")
    p.add_argument("--target", choices=("onnxruntime", "tensorrt"), default="onnxruntime",
                   help="tensorrt: export what TensorRT builds (INT4 as W4A16, weight DQ only; refuses INT8 blocks); "
                        "onnxruntime: the recipe as calibrated, e.g. W4A8 (default: %(default)s)")
    p.add_argument("--single-graph", action="store_true",
                   help="also write one graph for all groups (per-group shifts and scale ratios as runtime inputs: "
                        "weights held once); --backend onnxruntime then uses it")
    p.add_argument("--force", action="store_true")


def check_opset(opset: int) -> None:
    """The parser bounds --opset by what the exporter handles; the installed onnx may know fewer."""
    import onnx

    if opset > (newest := onnx.defs.onnx_opset_version()):
        raise UsageError(f"--opset {opset} is newer than the installed onnx {onnx.__version__} knows ({newest}); "
                         f"use --opset <= {newest} or upgrade onnx")


def run(args: argparse.Namespace) -> int:
    from ditq.artifacts.recipe import Recipe
    from ditq.export.onnx_export import export_onnx
    from ditq.models.loading import load_model

    check_opset(args.opset)
    recipe = Recipe.load(Path(args.recipe))
    model = load_model(args.model or recipe.model_source, expected_scheduler=recipe.scheduler_config,
                       expected_as=f"the recipe {args.recipe}")
    # export lints the staged set itself and refuses to put a set that breaks TensorRT's rules in place
    art = export_onnx(model, recipe, Path(args.output), recipe_dir=Path(args.recipe), opset=args.opset,
                      precision=args.precision, target=args.target, single_graph=args.single_graph,
                      force=args.force, progress=not args.quiet)
    print(f"onnx: {art.root}  groups={len(art.groups)}  ({art.seconds:.1f} s)")
    if art.single_graph:
        print(f"single graph: {art.single_graph['file']} (the groups' shifts and scale ratios in "
              f"{art.single_graph['feeds']}); --backend onnxruntime runs it, `ditq build` still builds one engine "
              "per group")
    if recipe.float_quantized_linears:
        print(f"note: method {recipe.method!r} quantizes activations per token and channel group at run time (float "
              "ops): this ONNX set runs on ONNX Runtime and the torch backend but cannot become TensorRT INT8 engines "
              "(`ditq build` refuses it; TensorRT needs constant Q/DQ scales). Lint below skips the expected "
              "gemm-both-inputs rule.")
    elif recipe.dynamic_activations:
        print(f"note: method {recipe.method!r} quantizes activations per token at run time: each GEMM input is "
              "divided by its token's scale (ReduceMax in the graph), quantized with a constant-scale Q/DQ, and the "
              "GEMM's rows are multiplied back. That is TensorRT's explicit-quantization form (lint-clean), but ditq "
              "has not built or timed a TensorRT engine of it (it was developed without TensorRT).")
    if art.weight_only:
        print(f"note: {len(art.weight_only)} INT4 Linear(s) exported weight-only (W4A16) for TensorRT, which has no "
              "INT4 x INT8 GEMM; validate's torch reference follows.")
    elif any(recipe.linear_spec(lin).w_bits == 4 for site in recipe.sites for lin in site.linears):
        print("note: W4A8 is a quality setting for ONNX Runtime and torch; TensorRT has no INT4 x INT8 GEMM "
              "(`ditq build` refuses it): export with --target tensorrt for W4A16.")
    print(f"lint: {len(art.groups) + 1} graphs, 0 violations of TensorRT's QDQ rules")
    return 0
