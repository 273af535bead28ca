"""``ditq bench KIND``: measurements that write files (``speed``, ``quality``; one handler per kind)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from ditq.cli.args import Parser, common_parent, float_range, groups_arg, int_range, nonnegative_int, positive_int

KINDS = ("speed", "quality", "attribute", "fullsize", "single-graph", "gpu", "serve")  # + add_args and a handler below


def progress(args: argparse.Namespace, kind: str) -> Callable[[str], None]:
    """``bench KIND: message`` lines on stderr, silenced by ``-q``."""

    def say(msg: str) -> None:
        if not args.quiet:
            print(f"bench {kind}: {msg}", file=sys.stderr, flush=True)

    return say


def _csv(value: str | None, cast: Callable[[str], object] = str) -> tuple | None:
    if value is None:
        return None
    return tuple(cast(v.strip()) for v in value.split(",") if v.strip())


def port_pair(value: str) -> tuple[int, int]:
    """``HTTP,gRPC``: two distinct TCP ports (argparse type: anything else is a usage error)."""
    items = tuple(int_range(1, 65535)(v.strip()) for v in value.split(","))
    if len(items) != 2 or items[0] == items[1]:
        raise argparse.ArgumentTypeError(f"must be two different ports HTTP,gRPC, got {value!r}")
    return items  # type: ignore[return-value]


def positive_ints(value: str) -> tuple[int, ...]:
    """A comma-separated list of positive integers (argparse type: a bad item is a usage error)."""
    items = tuple(positive_int(v.strip()) for v in value.split(",") if v.strip())
    if not items:
        raise argparse.ArgumentTypeError(f"must list positive integers, got {value!r}")
    return items


def add_speed_args(p: argparse.ArgumentParser) -> None:
    """The ``bench speed`` flags (the defaults live in ``ditq.bench.speed.SpeedConfig``)."""
    p.add_argument("-o", "--output", required=True, help="directory for speed.json and speed.md")
    p.add_argument("--quick", action="store_true", help="CI smoke set: tiny model, batch 1-2, few repeats")
    p.add_argument("--models", default=None,
                   help="comma-separated: demo, tiny, demo-arch, dit-s2-like, dit-xl2-256, dit-xl2-512 or model dirs")
    p.add_argument("--batches", type=positive_ints, default=None,
                   help="comma-separated batch sizes (default: 1,8,32)")
    p.add_argument("--backends", default=None,
                   help="comma-separated: onnxruntime, torch-int8 (default: onnxruntime on CPU, torch-int8 on CUDA)")
    p.add_argument("--threads", type=positive_int, default=None, help="intra-op threads, ORT and torch (default: 2)")
    p.add_argument("--repeats", type=positive_int, default=None, help="timed runs per measurement (default: 10)")
    p.add_argument("--warmup", type=nonnegative_int, default=None, help="untimed runs first (default: 3)")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None, help="torch backend device")
    p.add_argument("--torch-dtype", choices=("float32", "float16", "bfloat16"), default=None,
                   help="float parts of the torch pair (default: float32)")
    p.add_argument("--sampling-steps", type=nonnegative_int, default=None,
                   help="DDIM steps of the sampling timing; 0: skip")
    p.add_argument("--sampling-batch", type=positive_int, default=None, help="images per sampling run (default: 4)")
    p.add_argument("--spin", action=argparse.BooleanOptionalAction, default=None,
                   help="ORT intra-op thread spinning (default: off; spinning burns CPU on a shared machine)")
    p.add_argument("--profile", action="store_true", help="ORT per-op-type time breakdown (FP and INT8)")
    p.add_argument("--method", default=None, help="calibration method of the quick recipe, with options as in bench "
                   "quality (e.g. 'htg:act=\"token\"') (default: htg/minmax)")
    p.add_argument("--keep-artifacts", action="store_true", help="keep the ONNX sets under OUTPUT/artifacts")
    p.add_argument("--force", action="store_true", help="replace an existing output directory of this bench")


def run_speed(args: argparse.Namespace) -> int:
    from ditq.bench.speed import benchmark_speed, default_config, format_markdown, with_overrides

    cuda = None if args.device is None else args.device == "cuda"
    config = with_overrides(
        default_config(quick=args.quick, cuda=cuda),
        models=_csv(args.models), batches=args.batches, backends=_csv(args.backends),
        threads=args.threads, repeats=args.repeats, warmup=args.warmup, device=args.device,
        torch_dtype=args.torch_dtype, sampling_steps=args.sampling_steps, sampling_batch=args.sampling_batch,
        spinning=args.spin, profile=args.profile or None, method=args.method,
        keep_artifacts=args.keep_artifacts or None,
    )

    say = progress(args, "speed")
    result = benchmark_speed(config, Path(args.output), progress=say, force=args.force)
    print(format_markdown(result))
    print(f"wrote {Path(args.output) / 'speed.json'} and speed.md")
    return 0


def add_quality_args(p: argparse.ArgumentParser) -> None:
    """The ``bench quality`` flags (the defaults live in ``ditq.bench.quality_grid.QualityConfig``)."""
    p.add_argument("-o", "--output", required=True, help="directory for quality.md/.csv/.json and plots")
    p.add_argument("--quick", action="store_true", help="CI smoke set: tiny model, minmax + htg, 5 steps")
    p.add_argument("--model", default=None, help="'demo' (default) or a local DiT or PixArt directory")
    p.add_argument("--methods", default=None, help="comma-separated (default: minmax,smoothquant,ptq4dit,htg,qdit,"
                                                   "viditq)")
    p.add_argument("--bits", default=None, help="comma-separated: W8A8, W8A8-FP8, W4A8, W4A16 (default: all four; "
                                                "--quick: W8A8,W4A8; FP8 skips the dynamic methods qdit/viditq)")
    p.add_argument("--steps", type=positive_ints, default=None,
                   help="comma-separated sampler step counts (default: 100,50,25)")
    p.add_argument("--eval-samples", type=positive_int, default=None, help="images per cell (default: 100)")
    p.add_argument("--calib-seeds", type=nonnegative_int, nargs="+", default=None, metavar="SEED",
                   help="calibrate and evaluate every cell (and peer row) once per seed; the table shows the mean "
                        "and min-max over seeds (default: one seed, 1)")
    p.add_argument("--calib-steps", type=positive_int, default=None,
                   help="calibration sampler steps (default: each method's own; 100, PTQ4DiT 25)")
    p.add_argument("--calib-samples", type=positive_int, default=None,
                   help="calibration samples (default: each method's own; 16, PTQ4DiT 32)")
    p.add_argument("--w-block", type=int, choices=(0, 32, 64, 128), default=None,
                   help="W4A8 weight block along the input; 0: per output channel (default: 0)")
    p.add_argument("--peer", action=argparse.BooleanOptionalAction, default=None,
                   help="Model Optimizer rows when nvidia-modelopt is installed (default: on)")
    p.add_argument("--plots", action=argparse.BooleanOptionalAction, default=None, help="write plots (default: on)")
    p.add_argument("--threads", type=positive_int, default=None, help="torch intra-op threads")
    p.add_argument("--force", action="store_true", help="replace an existing output directory")


def run_quality(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from ditq.bench.quality_grid import QualityConfig, format_markdown, quick_config, run_quality_grid

    base = quick_config() if args.quick else QualityConfig()
    overrides = {"model": args.model, "methods": _csv(args.methods), "bits": _csv(args.bits),
                 "steps": args.steps, "eval_samples": args.eval_samples, "w4_block": args.w_block,
                 "calib_steps": args.calib_steps, "calib_samples": args.calib_samples,
                 "peer": args.peer, "plots": args.plots, "threads": args.threads,
                 "calib_seeds": tuple(args.calib_seeds) if args.calib_seeds else None}
    config = replace(base, **{k: v for k, v in overrides.items() if v is not None})

    say = progress(args, "quality")
    result = run_quality_grid(Path(args.output), config, force=args.force, progress=say)
    print(format_markdown(result))
    print(f"wrote {Path(args.output) / 'quality.md'}, quality.csv and quality.json")
    return 0


def add_attribute_args(p: argparse.ArgumentParser) -> None:
    """The ``bench attribute`` flags (the defaults live in ``ditq.bench.attribute.AttributeConfig``)."""
    p.add_argument("-o", "--output", required=True, help="directory for attribution.json/.md/.png")
    p.add_argument("--model", default=None, help="'demo' (default), 'tiny' or a local model directory")
    p.add_argument("--recipe", default=None, help="a recipe directory from `ditq calibrate` (default: calibrate "
                                                  "--method here)")
    p.add_argument("--method", default="htg", help="calibration method without --recipe (default: htg)")
    p.add_argument("--w-bits", type=int, choices=(8, 4), default=8, help="weight bits (default: 8)")
    p.add_argument("--w-block", type=int, choices=(0, 32, 64, 128), default=0, help="weight block (default: 0)")
    p.add_argument("--format", dest="fmt", choices=("int", "fp8"), default="int", help="quantizer grid")
    p.add_argument("--groups", type=groups_arg, default="auto", help="htg timestep groups, or 'auto'")
    p.add_argument("--alpha", type=float_range(0.0, 1.0), default=None, help="smoothing exponent (smoothquant)")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="a method option (repeatable)")
    p.add_argument("--calib-steps", type=positive_int, default=25, help="calibration steps (default: 25)")
    p.add_argument("--calib-samples", type=positive_int, default=8, help="calibration samples (default: 8)")
    p.add_argument("--calib-seed", type=nonnegative_int, default=1, help="calibration seed (default: 1)")
    p.add_argument("--steps", type=positive_int, default=25, help="DDPM steps of the FP trajectory (default: 25)")
    p.add_argument("--images", type=positive_int, default=4, help="images sampled (default: 4)")
    p.add_argument("--stride", type=positive_int, default=1, help="evaluate every N-th step (default: 1)")
    p.add_argument("--cfg", type=float, default=3.0, help="guidance scale (default: 3)")
    p.add_argument("--seed", type=nonnegative_int, default=0, help="sampling seed (default: 0)")
    p.add_argument("--top", type=nonnegative_int, default=3, help="sites whose tokens/channels are examined "
                                                                  "(default: 3)")
    p.add_argument("--target", choices=("eps", "x0"), default="eps",
                   help="measure the error of the model output (eps, default) or of the clean-image estimate it "
                        "implies (x0: the last steps' eps errors barely reach the image)")
    p.add_argument("--plots", action=argparse.BooleanOptionalAction, default=True, help="write attribution.png")
    p.add_argument("--threads", type=positive_int, default=None, help="torch intra-op threads")
    p.add_argument("--force", action="store_true", help="replace an existing output directory")


def run_attribute(args: argparse.Namespace) -> int:
    from ditq.bench.attribute import AttributeConfig, run_attribution
    from ditq.cli.calibrate import method_params
    from ditq.errors import DitqError

    if args.recipe is not None and (args.method != "htg" or args.param or args.alpha is not None
                                    or args.groups != "auto"):
        raise DitqError("--recipe already fixes the method and its options; drop --method/--groups/--alpha/--param "
                        "or drop --recipe")
    params = {} if args.recipe is not None else method_params(args)
    if params.get("groups") == "auto":
        del params["groups"]
    config = AttributeConfig(
        model=args.model, recipe=args.recipe, method=args.method, params=params, w_bits=args.w_bits,
        w_block=args.w_block, fmt={"int": "int", "fp8": "fp8_e4m3"}[args.fmt], calib_steps=args.calib_steps,
        calib_samples=args.calib_samples, calib_seed=args.calib_seed, steps=args.steps, images=args.images,
        stride=args.stride, cfg_scale=args.cfg, seed=args.seed, top_sites=args.top, target=args.target,
        plots=args.plots, threads=args.threads, progress=not args.quiet)
    result = run_attribution(Path(args.output), config, force=args.force, progress=progress(args, "attribute"))
    top = result["sites"][0]
    print(f"all sites quantized: {result['total']['all']['sqnr_db']:.1f} dB; worst site {top['name']} "
          f"({top['only_db']:.1f} dB alone, {100 * top['share']:.0f} % of the per-site error)")
    print(f"wrote {Path(args.output) / 'attribution.md'} and attribution.json")
    return 0


def add_fullsize_args(p: argparse.ArgumentParser) -> None:
    """The ``bench fullsize`` flags (defaults in ``ditq.bench.fullsize.FullsizeConfig``)."""
    p.add_argument("-o", "--output", required=True, help="directory for fullsize.json and fullsize.md")
    p.add_argument("--models", default=None, help="comma-separated architectures (default: dit-xl2-256, "
                   "dit-xl2-512, pixart-alpha-512, pixart-alpha-1024; also pixart-sigma-1024, tiny, pixart-tiny)")
    p.add_argument("--calib-steps", type=positive_int, default=None, help="calibration sampler steps (default: 4)")
    p.add_argument("--calib-samples", type=positive_int, default=None, help="calibration samples (default: 1)")
    p.add_argument("--validate-steps", type=positive_int, default=None, help="validation trajectory steps (default: 2)")
    p.add_argument("--groups", type=positive_int, default=None, help="HTG groups (default: 2)")
    p.add_argument("--threads", type=positive_int, default=None, help="torch threads (default: 2)")
    p.add_argument("--keep-artifacts", action="store_true", help="keep recipes and ONNX sets under OUTPUT/artifacts")
    p.add_argument("--force", action="store_true", help="replace an existing output directory of this bench")


def run_fullsize(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from ditq.bench.fullsize import FullsizeConfig, benchmark_fullsize

    overrides = {k: v for k, v in {"models": _csv(args.models), "calib_steps": args.calib_steps,
                                   "calib_samples": args.calib_samples, "validate_steps": args.validate_steps,
                                   "groups": args.groups, "threads": args.threads,
                                   "keep_artifacts": args.keep_artifacts or None}.items() if v is not None}
    results = benchmark_fullsize(replace(FullsizeConfig(), **overrides), Path(args.output),
                                 progress=lambda m: print(m, file=sys.stderr, flush=True), force=args.force)
    failed = [r["model"] for r in results["models"] if "error" in r or not r["validation"]["passed"]]
    print(f"{Path(args.output) / 'fullsize.md'}: {len(results['models'])} model(s)"
          + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 3 if failed else 0


def add_single_graph_args(p: argparse.ArgumentParser) -> None:
    """The ``bench single-graph`` flags (defaults in ``ditq.bench.single_graph.SingleGraphConfig``)."""
    p.add_argument("-o", "--output", required=True, help="directory for single_graph.json and single_graph.md")
    p.add_argument("--models", default=None, help="comma-separated: tiny, demo, demo-arch, ... (default: tiny,demo)")
    p.add_argument("--batch", type=positive_int, default=None, help="batch, CFG included (default: 8)")
    p.add_argument("--groups", type=positive_int, default=None, help="HTG groups (default: 4)")
    p.add_argument("--calib-steps", type=positive_int, default=None, help="calibration steps (default: 10)")
    p.add_argument("--repeats", type=positive_int, default=None, help="timed calls per variant (default: 20)")
    p.add_argument("--threads", type=positive_int, default=None, help="ORT intra-op threads (default: 2)")
    p.add_argument("--force", action="store_true", help="replace an existing output directory of this bench")


def run_single_graph(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from ditq.bench.single_graph import SingleGraphConfig, bench_single_graph, format_markdown

    overrides = {k: v for k, v in {"models": _csv(args.models), "batch": args.batch, "groups": args.groups,
                                   "calib_steps": args.calib_steps, "repeats": args.repeats,
                                   "threads": args.threads}.items() if v is not None}

    say = progress(args, "single-graph")
    result = bench_single_graph(replace(SingleGraphConfig(), **overrides), Path(args.output), force=args.force,
                                progress=say)
    print(format_markdown(result))
    print(f"wrote {Path(args.output) / 'single_graph.json'} and single_graph.md")
    return 0


def add_gpu_args(p: argparse.ArgumentParser) -> None:
    """The ``bench gpu`` flags (defaults in ``ditq.bench.gpu_check.GpuCheckConfig``)."""
    p.add_argument("-o", "--output", required=True, help="JSON file to write")
    p.add_argument("--quick", action="store_true", help="tiny models, batch 1-2, float32: to check it runs (CPU)")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda (cpu with --quick)")
    p.add_argument("--models", default=None, help="comma-separated (default: dit-xl2-256,pixart-alpha-512)")
    p.add_argument("--batches", type=positive_ints, default=None, help="comma-separated (default: 1,8,16)")
    p.add_argument("--dtypes", default=None, help="float parts, comma-separated (default: float16,bfloat16)")
    p.add_argument("--repeats", type=positive_int, default=None, help="timed runs per measurement (default: 20)")
    p.add_argument("--force", action="store_true", help="replace an existing output file")


def run_gpu(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from ditq.bench.gpu_check import QUICK, GpuCheckConfig, format_table, run_gpu_check

    base = QUICK if args.quick else GpuCheckConfig()
    overrides = {k: v for k, v in {"device": args.device, "models": _csv(args.models), "batches": args.batches,
                                   "dtypes": _csv(args.dtypes), "repeats": args.repeats}.items() if v is not None}

    say = progress(args, "gpu")
    result = run_gpu_check(replace(base, **overrides), Path(args.output), force=args.force, progress=say)
    print(format_table(result))
    print(f"wrote {args.output}")
    return 3 if any("error" in m for m in result["models"]) else 0


def add_serve_args(p: argparse.ArgumentParser) -> None:
    """The ``bench serve`` flags (defaults in ``ditq.serve.bench.ServeBenchConfig``)."""
    p.add_argument("artifact", help="a DiT ONNX set from `ditq export`")
    p.add_argument("-o", "--output", required=True, help="directory for serve.json and serve.md")
    p.add_argument("--quick", action="store_true", help="CI smoke set: 1 and 2 clients, 5 steps, one loop")
    p.add_argument("--clients", type=positive_ints, default=None, help="concurrent clients (default: 1,2,4,8)")
    p.add_argument("--steps", type=positive_int, default=None, help="DDIM steps per loop (default: 20)")
    p.add_argument("--loops", type=positive_int, default=None, help="sampling loops per client (default: 2)")
    p.add_argument("--threads", type=positive_int, default=None, help="ONNX Runtime threads per group model")
    p.add_argument("--ports", type=port_pair, default=(18000, 18001),
                   help="HTTP,gRPC ports on 127.0.0.1 (default: 18000,18001)")
    p.add_argument("--python", default=None, help="the serving interpreter (see `ditq serve --help`)")
    p.add_argument("--force", action="store_true", help="replace an existing output directory of this bench")


def run_serve(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from ditq.errors import CheckFailed
    from ditq.serve.bench import QUICK, ServeBenchConfig, benchmark_serve

    overrides = {k: v for k, v in {"clients": args.clients, "steps": args.steps, "loops": args.loops,
                                   "threads": args.threads}.items() if v is not None}
    config = replace(QUICK if args.quick else ServeBenchConfig(), **overrides)
    result = benchmark_serve(Path(args.artifact), Path(args.output), config, python=args.python, force=args.force,
                             ports=args.ports, progress=None if args.quiet else progress(args, "serve"))
    from ditq.serve.bench import format_markdown

    print(format_markdown(result))
    bad = [r for r in result["rows"] if r["failed"] or r["lost"] or r["hung_clients"]]
    if bad:
        raise CheckFailed(f"{sum(r['failed'] + r['lost'] for r in bad)} failed or lost request(s) under load "
                          f"({', '.join(str(r['clients']) for r in bad)} client(s)); see {args.output}/serve.json")
    return 0


def add_args(p: argparse.ArgumentParser) -> None:
    """``bench KIND``: one sub-parser per kind, each with its own --debug and -q."""
    kinds = p.add_subparsers(dest="kind", required=True, metavar="KIND", parser_class=Parser)
    common = common_parent()
    add_speed_args(kinds.add_parser("speed", help="FP vs INT8 latency: ORT on CPU, torch-int8 on CUDA",
                                    parents=[common],
                                    description="FP vs INT8 latency (ORT on CPU, torch-int8 on CUDA), speed.json/.md"))
    add_quality_args(kinds.add_parser("quality", help="method x W8A8/W4A8 x steps quality grid vs FP", parents=[common],
                                      description="quality of every method at W8A8 and W4A8 and several step "
                                                  "counts vs FP: quality.md/.csv/.json and plots"))
    add_attribute_args(kinds.add_parser(
        "attribute", help="which sites, timesteps, weights/inputs, tokens and channels carry a recipe's error",
        parents=[common], description="teacher-forced error attribution of a recipe on the FP trajectory: per site, "
                                      "kind, block, group and timestep (one at a time, leave one out, weight vs "
                                      "input), token/channel concentration; attribution.json/.md/.png"))
    add_fullsize_args(kinds.add_parser("fullsize", help="DiT-XL/2 and PixArt-α with random weights through the "
                                       "pipeline: time and peak memory per stage", parents=[common],
                                       description="published full-size architectures (random weights): calibrate "
                                                   "-> export -> lint -> validate, fullsize.json/.md"))

    add_single_graph_args(kinds.add_parser(
        "single-graph", help="one graph with per-group runtime inputs vs G group graphs (ORT, CPU)", parents=[common],
        description="one graph whose shifts and activation-scale ratios are runtime inputs vs the G per-group "
                    "graphs: latency, RSS, fusion, exactness; single_graph.json/.md"))

    add_gpu_args(kinds.add_parser(
        "gpu", help="torch-int8 vs FP16/BF16 on DiT-XL/2 and PixArt-α shapes on one CUDA GPU (one short run)",
        parents=[common], description="torch-int8 vs FP16/BF16 latency, group-switch overhead and memory on the "
                                      "published DiT-XL/2 and PixArt-α shapes (random weights); writes JSON"))

    add_serve_args(kinds.add_parser("serve", help="concurrent clients sampling through a real Triton server (ONNX set)",
                                    parents=[common], description="1/2/4/8 concurrent clients running sampling loops "
                                    "through Triton: steps/s, images/s, p50/p99, mixed-group batches, serve.json/.md"))


HANDLERS = {"speed": run_speed, "quality": run_quality, "attribute": run_attribute, "fullsize": run_fullsize,
            "single-graph": run_single_graph, "gpu": run_gpu, "serve": run_serve}


def run(args: argparse.Namespace) -> int:
    return HANDLERS[args.kind](args)
