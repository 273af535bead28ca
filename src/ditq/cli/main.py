"""The ``ditq`` command: one parser, subcommand handlers imported on dispatch (so ``--help`` stays fast)."""

from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys

from ditq import __version__
from ditq.cli.args import (  # noqa: F401  (CALIBRATION_DEFAULTS, calibration_default: re-exported for callers)
    CALIBRATION_DEFAULTS,
    EXIT_CHECK_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    EXIT_USER_ERROR,
    Parser,
    UsageError,
    calibration_default,
    common_args,
    common_parent,
)
from ditq.cli.calibrate import METHODS  # noqa: F401  (re-exported: a test keeps it in sync with the registry)
from ditq.errors import CheckFailed, DitqError

# name -> (module with add_args(p) and run(args) [and check_args(args)], help); each module imports only the
# standard library and light ditq modules at its top, so building the parser (``--help``) stays fast
COMMANDS: dict[str, tuple[str, str]] = {
    "calibrate": ("ditq.cli.calibrate", "collect per-timestep statistics and write a recipe"),
    "export": ("ditq.cli.export", "fold a recipe into the model and write one QDQ ONNX graph per timestep group"),
    "lint": ("ditq.cli.lint", "check ONNX graphs against TensorRT's explicit-quantization rules"),
    "sample": ("ditq.cli.sample", "generate images with the grouped runtime"),
    "validate": ("ditq.cli.validate", "compare torch FP, ONNX Runtime FP and ONNX Runtime QDQ per group (Polygraphy)"),
    "demo": ("ditq.cli.demo", "calibrate, export, lint, validate and sample the bundled demo model (FP vs INT8)"),
    "train-demo": ("ditq.cli.train_demo", "re-train the bundled demo model and classifier from sklearn's digits"),
    "build": ("ditq.cli.build", "build one TensorRT engine per timestep group from an ONNX directory (needs tensorrt)"),
    "triton": ("ditq.cli.triton", "write a Triton Inference Server model repository (one model per timestep group "
                                  "and a routing Python-backend model) for an ONNX or engine set"),
    "serve": ("ditq.cli.serve", "serve an ONNX set locally through Triton (PyTriton), routed by timestep group"),
    "doctor": ("ditq.cli.doctor", "which backends work on this machine, and why not"),
    "bench": ("ditq.cli.bench", "measurements that write files: speed (FP vs INT8 latency per backend, batch and "
                                "model), quality (methods x bits x steps vs FP), fullsize (published architectures: "
                                "time and memory)"),
}
# third-party loggers that warn about things ditq does not use (torch.onnx: "torchvision is not installed")
_NOISY_LOGGERS = ("torch.onnx._internal.exporter._registration",)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="ditq", description=__doc__)
    parser.add_argument("--version", action="version", version=f"ditq {__version__}")
    common_args(parser, default=False)
    common = common_parent()
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)
    for name, (module, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_, parents=[common])
        p.set_defaults(handler=module)
        importlib.import_module(module).add_args(p)
    return parser


def check_args(args: argparse.Namespace) -> None:
    """Checks between flags, right after parsing (before any work), by the command's ``check_args`` if it has
    one: ``UsageError`` (exit 2)."""
    check = getattr(importlib.import_module(args.handler), "check_args", None)
    if check is not None:
        check(args)


def configure_logging(debug: bool) -> None:
    """ditq's verbosity: warnings by default, debug records with --debug; other libraries' irrelevant warnings
    are hidden unless --debug. (Polygraphy's logger follows the ``ditq`` logger: see ``ditq.validation.compare``.)"""
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
