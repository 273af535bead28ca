"""The ``ditq`` command: one parser, subcommand handlers imported on dispatch (so ``--help`` stays fast)."""

from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys

from ditq import __version__
from ditq.errors import CheckFailed, DitqError

EXIT_OK, EXIT_USER_ERROR, EXIT_USAGE, EXIT_CHECK_FAILED = 0, 1, 2, 3
# kept in sync with ditq.calibration.methods by a test, without importing torch here
METHODS = ("htg", "minmax", "smoothquant", "ptq4dit", "qdit", "viditq")
SCHEDULER_CONFIG_HELP = ("the scheduler_config.json (or a folder holding it) of the schedule the model was trained "
                         "with; needed when the model directory has none (sample: must match the artifact's)")


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


def _sampling_args(p: argparse.ArgumentParser, steps: int) -> None:
    p.add_argument("--steps", type=int, default=steps, help="sampler steps (default: %(default)s)")
    p.add_argument("--scheduler", choices=("ddpm", "ddim", "dpmsolver"), default=None,
                   help="diffusers scheduler (default: the model's own)")
    p.add_argument("--cfg", type=float, default=3.0, help="classifier-free guidance scale (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line (``ditq calibrate: error: ...``) and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ditq", description=__doc__)
    parser.add_argument("--version", action="version", version=f"ditq {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for user errors too")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    def add(name: str, help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(handler=f"ditq.cli.{name.replace('-', '_')}")
        return p

    p = add("calibrate", "collect per-timestep statistics and write a recipe")
    p.add_argument("model", help="a local diffusers DiT or PixArt directory, or 'demo'")
    p.add_argument("--scheduler-config", default=None, metavar="PATH", help=SCHEDULER_CONFIG_HELP)
    p.add_argument("-o", "--output", required=True, help="recipe directory to write")
    p.add_argument("--method", default="htg", choices=METHODS)
    p.add_argument("--groups", type=_groups, default="auto", help="number of timestep groups, or 'auto' (htg)")
    p.add_argument("--samples", type=int, default=None,
                   help="samples per calibration run (default: the method's own, e.g. ptq4dit 32, else 16)")
    _sampling_args(p, steps=100)
    p.set_defaults(steps=None)  # the method's own calibration steps (ptq4dit: 25), else 100
    p.add_argument("--w-bits", type=int, choices=(8, 4), default=8, help="weight bits (default: %(default)s)")
    p.add_argument("--w-block", type=int, choices=(0, 32, 64, 128), default=0,
                   help="weight block along the input channels; 0: per output channel (default: %(default)s)")
    p.add_argument("--alpha", type=float, default=None, help="smoothing exponent (smoothquant, viditq)")
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
    p.add_argument("--opset", type=int, default=21)
    p.add_argument("--precision", choices=("fp32", "fp16"), default="fp32",
                   help="float type outside INT8 (fp16 for TensorRT's strongly typed networks; fp32 for CPU speed)")
    p.add_argument("--force", action="store_true")

    p = add("lint", "check ONNX graphs against TensorRT's explicit-quantization rules")
    p.add_argument("onnx_dir", help="directory of .onnx files (or one file)")

    p = add("sample", "generate images with the grouped runtime")
    p.add_argument("artifact", help="ONNX directory (or a recipe directory with --backend torch)")
    p.add_argument("--scheduler-config", default=None, metavar="PATH", help=SCHEDULER_CONFIG_HELP)
    p.add_argument("--backend", choices=("onnxruntime", "torch", "tensorrt"), default="onnxruntime")
    p.add_argument("--fp", action="store_true", help="run the unquantized model instead")
    p.add_argument("--classes", default=None,
                   help="comma-separated class labels (DiT) or caption-table rows (PixArt); default: the first 10")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads")
    p.add_argument("--exact-qdq", action="store_true",
                   help="ONNX Runtime: run Q/DQ as exact float arithmetic instead of fused integer kernels")
    _sampling_args(p, steps=100)
    p.add_argument("-o", "--output", required=True, help="PNG grid to write")
    p.add_argument("--force", action="store_true", help="replace an existing PNG file")

    p = add("validate", "compare torch FP, ONNX Runtime FP and ONNX Runtime QDQ per group (Polygraphy)")
    p.add_argument("artifact", help="ONNX directory from `ditq export`")
    p.add_argument("-o", "--output", default=None,
                   help="report directory (default: ARTIFACT/validation, replaced by each run)")
    p.add_argument("--force", action="store_true", help="replace an existing report directory given with -o")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--min-sqnr", type=float, default=15.0, help="QDQ graph SQNR floor in dB (default: %(default)s)")
    p.add_argument("--min-cosine", type=float, default=0.98, help="QDQ graph cosine floor (default: %(default)s)")
    p.add_argument("--min-ref-sqnr", type=float, default=None,
                   help="FP reference graph SQNR floor in dB (default: by the set's precision, fp32 60, fp16 30)")
    p.add_argument("--min-ref-cosine", type=float, default=None,
                   help="FP reference graph cosine floor (default: by the set's precision, fp32 0.99999, fp16 0.9995)")
    p.add_argument("--trt", metavar="ENGINE_DIR", default=None,
                   help="also run these TensorRT engines (`ditq build` of ARTIFACT) on the same feeds, same floors")

    p = add("demo", "calibrate, export, lint, validate and sample the bundled demo model (FP vs INT8)")
    p.add_argument("-o", "--output", default="ditq-demo", help="output directory (default: %(default)s)")
    p.add_argument("--model", default="demo", help="model directory (default: the bundled demo)")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--samples", type=int, default=16, help="calibration samples")
    p.add_argument("--eval-samples", type=int, default=50, help="images generated per variant for the metrics")
    p.add_argument("--groups", type=_groups, default="auto")
    p.add_argument("--baseline", action=argparse.BooleanOptionalAction, default=True,
                   help="also run the minmax baseline for comparison (default: on)")
    p.add_argument("--force", action="store_true")

    p = add("train-demo", "re-train the bundled demo model and classifier from sklearn's digits")
    p.add_argument("-o", "--output", required=True, help="model directory to write")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-steps", type=int, default=None, help="optimizer steps (default: the shipped recipe)")
    p.add_argument("--arch", choices=("dit", "pixart"), default="dit",
                   help="dit: the bundled demo model; pixart: a tiny caption-conditioned PixArt (not bundled)")
    p.add_argument("--force", action="store_true")

    p = add("build", "build one TensorRT engine per timestep group from an ONNX directory (needs tensorrt)")
    p.add_argument("onnx_dir", help="ONNX directory from `ditq export`")
    p.add_argument("-o", "--output", required=True, help="engine directory to write")
    p.add_argument("--min-batch", type=int, default=1, help="smallest batch, CFG included (default: %(default)s)")
    p.add_argument("--opt-batch", type=int, default=8, help="batch TensorRT tunes for (default: %(default)s)")
    p.add_argument("--max-batch", type=int, default=32, help="largest batch (default: %(default)s)")
    p.add_argument("--workspace-gib", type=float, default=4.0, help="workspace limit (default: %(default)s)")
    p.add_argument("--opt-level", type=int, default=3, help="builder optimization level 0-5 (default: %(default)s)")
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
                                    description="FP vs INT8 latency (ORT on CPU, torch-int8 on CUDA), speed.json/.md"))
    add_quality_args(kinds.add_parser("quality", help="method x W8A8/W4A8 x steps quality grid vs FP",
                                      description="quality of every method at W8A8 and W4A8 and several step "
                                                  "counts vs FP: quality.md/.csv/.json and plots"))
    add_fullsize_args(kinds.add_parser("fullsize", help="DiT-XL/2 and PixArt-α with random weights through the "
                                       "pipeline: time and peak memory per stage",
                                       description="published full-size architectures (random weights): calibrate "
                                                   "-> export -> lint -> validate, fullsize.json/.md"))
    return parser


def _one_line(err: Exception) -> str:
    return " ".join(str(err).split())


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is, so that it unwinds like Ctrl-C: staging directories are removed."""


def _terminate(signum: int, frame: object) -> None:
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    previous = signal.getsignal(signal.SIGTERM)
    if previous == signal.SIG_DFL:  # not when embedded in a program that handles SIGTERM itself
        try:
            signal.signal(signal.SIGTERM, _terminate)
        except ValueError:  # not the main thread: leave the signal alone
            previous = None
    try:
        return int(importlib.import_module(args.handler).run(args))
    except CheckFailed as err:
        if args.debug:
            raise
        print(f"ditq {args.command}: check failed: {_one_line(err)}", file=sys.stderr)
        return EXIT_CHECK_FAILED
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
