"""The ``ditq`` command: one parser, subcommand handlers imported on dispatch (so ``--help`` stays fast)."""

from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys

from ditq import __version__
from ditq.cli.args import (
    UsageError,
    finite_float,
    float_range,
    int_range,
    positive_float,
    positive_int,
    seed_int,
)
from ditq.errors import CheckFailed, DitqError

EXIT_OK, EXIT_USER_ERROR, EXIT_USAGE, EXIT_CHECK_FAILED = 0, 1, 2, 3
# kept in sync with ditq.calibration.methods by a test, without importing torch here
METHODS = ("htg", "minmax", "smoothquant", "ptq4dit", "qdit", "viditq")
SCHEDULER_CONFIG_HELP = ("the scheduler_config.json (or a folder holding it) of the schedule the model was trained "
                         "with; needed when the model directory has none (sample: must match the artifact's)")
# the calibration steps and samples each method uses when --steps / --samples are not given: "" for every method
# without its own (`MethodConfig.calibration_defaults`; kept in sync with the registry by a test)
CALIBRATION_DEFAULTS = {"": {"steps": 100, "samples": 16}, "ptq4dit": {"steps": 25, "samples": 32}}
# --opset: the dynamo exporter needs >= 18 and FP16 Q/DQ scales 19; onnx's version converter (onnx 1.23, torch
# 2.13) fails on the Attention op above 25. `ditq export` also refuses an opset the installed onnx does not know.
OPSETS = (19, 25)
# third-party loggers that warn about things ditq does not use (torch.onnx: "torchvision is not installed")
_NOISY_LOGGERS = ("torch.onnx._internal.exporter._registration",)


def _groups(value: str) -> int | str:
    if value == "auto":
        return value
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer or 'auto', got {value!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer or 'auto', got {value!r}")
    return n


def calibration_default(method: str, key: str) -> int:
    return CALIBRATION_DEFAULTS.get(method, CALIBRATION_DEFAULTS[""]).get(key, CALIBRATION_DEFAULTS[""][key])


def _defaults_help(key: str) -> str:
    """``100; ptq4dit 25``: the value every method uses, then the methods with their own."""
    own = ", ".join(f"{m} {d[key]}" for m, d in CALIBRATION_DEFAULTS.items() if m and key in d)
    return f"{CALIBRATION_DEFAULTS[''][key]}{f'; {own}' if own else ''}"


def _sampling_args(p: argparse.ArgumentParser, steps: int) -> None:
    p.add_argument("--steps", type=positive_int, default=steps,
                   help="sampler steps, at most the model's training timesteps (default: %(default)s)")
    p.add_argument("--scheduler", choices=("ddpm", "ddim", "dpmsolver"), default=None,
                   help="diffusers scheduler (default: the model's own)")
    p.add_argument("--cfg", type=float_range(0.0), default=3.0,
                   help="classifier-free guidance scale (default: %(default)s)")
    p.add_argument("--seed", type=seed_int, default=0, help="noise seed (default: %(default)s)")


def _common_args(p: argparse.ArgumentParser, default: object) -> None:
    """--debug and -q, accepted before and after the subcommand: the subcommands' copies default to SUPPRESS so
    that they leave the top-level value alone unless given."""
    p.add_argument("--debug", action="store_true", default=default,
                   help="show tracebacks for user errors and Polygraphy's log")
    p.add_argument("-q", "--quiet", action="store_true", default=default, help="no progress bars")


def _set_help(p: argparse.ArgumentParser, flag: str, text: str) -> None:
    next(a for a in p._actions if flag in a.option_strings).help = text


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line (``ditq calibrate: error: ...``) and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ditq", description=__doc__)
    parser.add_argument("--version", action="version", version=f"ditq {__version__}")
    _common_args(parser, default=False)
    common = _Parser(add_help=False)
    _common_args(common, default=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    def add(name: str, help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_, parents=[common])
        p.set_defaults(handler=f"ditq.cli.{name.replace('-', '_')}")
        return p

    p = add("calibrate", "collect per-timestep statistics and write a recipe")
    p.add_argument("model", help="a local diffusers DiT or PixArt directory, or 'demo'")
    p.add_argument("--scheduler-config", default=None, metavar="PATH", help=SCHEDULER_CONFIG_HELP)
    p.add_argument("-o", "--output", required=True, help="recipe directory to write")
    p.add_argument("--method", default="htg", choices=METHODS)
    p.add_argument("--groups", type=_groups, default="auto", help="number of timestep groups, or 'auto' (htg)")
    p.add_argument("--samples", type=positive_int, default=None,
                   help=f"samples per calibration run (default: {_defaults_help('samples')})")
    _sampling_args(p, steps=100)
    p.set_defaults(steps=None)  # the method's own calibration steps (CALIBRATION_DEFAULTS)
    _set_help(p, "--steps", f"calibration sampler steps, at most the model's training timesteps (default: "
                            f"{_defaults_help('steps')})")
    p.add_argument("--w-bits", type=int, choices=(8, 4), default=8, help="weight bits (default: %(default)s)")
    p.add_argument("--w-block", type=int, choices=(0, 32, 64, 128), default=0,
                   help="weight block along the input channels; 0: per output channel (default: %(default)s)")
    p.add_argument("--alpha", type=float_range(0.0, 1.0), default=None, help="smoothing exponent (smoothquant, viditq)")
    p.add_argument("--weight-clip", choices=("output", "mse"), default="output",
                   help="weight clip search criterion of htg/ptq4dit/qdit/viditq: output error (H-weighted) or "
                        "weight MSE (default: %(default)s)")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="a method option, e.g. --param population=20 for qdit (repeatable; values parsed as JSON)")
    p.add_argument("--force", action="store_true", help="replace an existing output directory")

    p = add("export", "fold a recipe into the model and write one QDQ ONNX graph per timestep group")
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
    p.add_argument("--force", action="store_true")

    p = add("lint", "check ONNX graphs against TensorRT's explicit-quantization rules")
    p.add_argument("onnx_dir", help="directory of .onnx files (or one file)")
    p.add_argument("--target", choices=("onnxruntime", "tensorrt-10", "tensorrt-11"), default=None,
                   help="whose rules: a TensorRT major (what it can build) or onnxruntime (placement rules only); "
                        "default: an exported set's own target, tensorrt-11 for other files")

    p = add("sample", "generate images with the grouped runtime")
    p.add_argument("artifact", help="ONNX directory (or a recipe directory with --backend torch)")
    p.add_argument("--scheduler-config", default=None, metavar="PATH", help=SCHEDULER_CONFIG_HELP)
    p.add_argument("--backend", choices=("onnxruntime", "torch", "tensorrt"), default="onnxruntime")
    p.add_argument("--fp", action="store_true", help="run the unquantized model instead")
    p.add_argument("--classes", default=None,
                   help="comma-separated class labels (DiT) or caption-table rows (PixArt); default: the first 10")
    p.add_argument("--threads", type=positive_int, default=None, help="ONNX Runtime intra-op threads")
    p.add_argument("--qdq", choices=("auto", "exact", "fused"), default="auto",
                   help="ONNX Runtime: Q/DQ as exact float arithmetic, or fused integer kernels (exact only with "
                        "VNNI: they saturate on AVX2); auto: fused only on a CPU with VNNI (default: %(default)s)")
    p.add_argument("--exact-qdq", dest="qdq", action="store_const", const="exact", help="same as --qdq exact")
    _sampling_args(p, steps=100)
    p.add_argument("-o", "--output", required=True, help="PNG grid to write")
    p.add_argument("--force", action="store_true", help="replace an existing PNG file")

    p = add("validate", "compare torch FP, ONNX Runtime FP and ONNX Runtime QDQ per group (Polygraphy)")
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

    p = add("demo", "calibrate, export, lint, validate and sample the bundled demo model (FP vs INT8)")
    p.add_argument("-o", "--output", default="ditq-demo", help="output directory (default: %(default)s)")
    p.add_argument("--model", default="demo", help="model directory (default: the bundled demo)")
    p.add_argument("--steps", type=positive_int, default=100, help="sampler steps (default: %(default)s)")
    p.add_argument("--samples", type=positive_int, default=16, help="calibration samples (default: %(default)s)")
    p.add_argument("--eval-samples", type=positive_int, default=50,
                   help="images generated per variant for the metrics (default: %(default)s)")
    p.add_argument("--groups", type=_groups, default="auto")
    p.add_argument("--baseline", action=argparse.BooleanOptionalAction, default=True,
                   help="also run the minmax baseline for comparison (default: on)")
    p.add_argument("--force", action="store_true")

    p = add("train-demo", "re-train the bundled demo model and classifier from sklearn's digits")
    p.add_argument("-o", "--output", required=True, help="model directory to write")
    p.add_argument("--seed", type=seed_int, default=0)
    p.add_argument("--train-steps", type=positive_int, default=None,
                   help="optimizer steps (default: the shipped recipe)")
    p.add_argument("--arch", choices=("dit", "pixart"), default="dit",
                   help="dit: the bundled demo model; pixart: a tiny caption-conditioned PixArt (not bundled)")
    p.add_argument("--force", action="store_true")

    p = add("build", "build one TensorRT engine per timestep group from an ONNX directory (needs tensorrt)")
    p.add_argument("onnx_dir", help="ONNX directory from `ditq export`")
    p.add_argument("-o", "--output", required=True, help="engine directory to write")
    p.add_argument("--min-batch", type=positive_int, default=1,
                   help="smallest batch, CFG included (default: %(default)s)")
    p.add_argument("--opt-batch", type=positive_int, default=8, help="batch TensorRT tunes for (default: %(default)s)")
    p.add_argument("--max-batch", type=positive_int, default=32, help="largest batch (default: %(default)s)")
    p.add_argument("--workspace-gib", type=positive_float, default=4.0, help="workspace limit (default: %(default)s)")
    p.add_argument("--opt-level", type=int_range(0, 5), default=3,
                   help="builder optimization level 0-5 (default: %(default)s)")
    p.add_argument("--timing-cache", default=None, help="timing cache file to load and update (shared by builds)")
    p.add_argument("--force", action="store_true")

    p = add("doctor", "which backends work on this machine, and why not")

    p = add("bench", "measurements that write files: speed (FP vs INT8 latency per backend, batch and model), "
                     "quality (methods x bits x steps vs FP), fullsize (published architectures: time and memory)")
    kinds = p.add_subparsers(dest="kind", required=True, metavar="KIND", parser_class=_Parser)
    from ditq.cli.bench import (  # flag definitions only: no heavy imports
        add_fullsize_args,
        add_quality_args,
        add_speed_args,
    )

    add_speed_args(kinds.add_parser("speed", help="FP vs INT8 latency: ORT on CPU, torch-int8 on CUDA",
                                    parents=[common],
                                    description="FP vs INT8 latency (ORT on CPU, torch-int8 on CUDA), speed.json/.md"))
    add_quality_args(kinds.add_parser("quality", help="method x W8A8/W4A8 x steps quality grid vs FP", parents=[common],
                                      description="quality of every method at W8A8 and W4A8 and several step "
                                                  "counts vs FP: quality.md/.csv/.json and plots"))
    add_fullsize_args(kinds.add_parser("fullsize", help="DiT-XL/2 and PixArt-α with random weights through the "
                                       "pipeline: time and peak memory per stage", parents=[common],
                                       description="published full-size architectures (random weights): calibrate "
                                                   "-> export -> lint -> validate, fullsize.json/.md"))
    return parser


def check_args(args: argparse.Namespace) -> None:
    """Checks between flags, right after parsing (before any work): ``UsageError`` (exit 2)."""
    method = getattr(args, "method", "htg")  # demo calibrates htg (and the one-group baseline)
    if args.command in ("calibrate", "demo") and isinstance(args.groups, int) and method == "htg":
        steps = args.steps if args.steps is not None else calibration_default(method, "steps")
        if args.groups > steps:
            raise UsageError(f"--groups {args.groups} needs at least as many calibration timesteps, but --steps is "
                             f"{steps}; use --groups <= {steps} or more --steps")
    if args.command == "build" and not args.min_batch <= args.opt_batch <= args.max_batch:
        raise UsageError(f"batches must satisfy --min-batch <= --opt-batch <= --max-batch, got {args.min_batch}, "
                         f"{args.opt_batch}, {args.max_batch}")


def configure_logging(debug: bool) -> None:
    """ditq's verbosity: warnings by default, debug records with --debug; other libraries' irrelevant warnings
    are hidden unless --debug. (Polygraphy's logger follows the ``ditq`` logger: see ``ditq.validate.compare``.)"""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("ditq").setLevel(logging.DEBUG if debug else logging.WARNING)
    for name in _NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET if debug else logging.ERROR)


def _one_line(err: Exception) -> str:
    return " ".join(str(err).split())


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is, so that it unwinds like Ctrl-C: staging directories are removed."""


def _terminate(signum: int, frame: object) -> None:
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.debug)
    previous = signal.getsignal(signal.SIGTERM)
    if previous == signal.SIG_DFL:  # not when embedded in a program that handles SIGTERM itself
        try:
            signal.signal(signal.SIGTERM, _terminate)
        except ValueError:  # not the main thread: leave the signal alone
            previous = None
    try:
        check_args(args)
        return int(importlib.import_module(args.handler).run(args))
    except CheckFailed as err:
        if args.debug:
            raise
        print(f"ditq {args.command}: check failed: {_one_line(err)}", file=sys.stderr)
        return EXIT_CHECK_FAILED
    except UsageError as err:  # argparse's format and exit status, for what only the model or artifact can rule out
        if args.debug:
            raise
        print(f"ditq {args.command}: error: {_one_line(err)}", file=sys.stderr)
        return EXIT_USAGE
    except DitqError as err:
        if args.debug:
            raise
        print(f"ditq {args.command}: error: {_one_line(err)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except Terminated:
        print(f"ditq {args.command}: terminated; partial output removed", file=sys.stderr)
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        print(f"ditq {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        if previous == signal.SIG_DFL:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
