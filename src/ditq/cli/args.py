"""Typed argparse values: every number a flag takes is checked while parsing, so a bad one is a usage error (exit 2).

Stdlib only: the parser is built on every ``ditq`` call, ``--help`` included.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

from ditq.errors import DitqError


class UsageError(DitqError):
    """A flag value that only the loaded model or artifact can rule out (``--steps`` above the training
    timesteps): reported like argparse's errors, one line and exit 2."""


def _int(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {value!r}") from None


def int_range(lo: int, hi: int | None = None) -> Callable[[str], int]:
    """An integer in ``[lo, hi]`` (``hi=None``: no upper bound)."""

    def parse(value: str) -> int:
        n = _int(value)
        if n < lo or (hi is not None and n > hi):
            raise argparse.ArgumentTypeError(
                f"must be an integer in [{lo}, {'2**63 - 1' if hi == 2**63 - 1 else hi}], got {value!r}"
                if hi is not None
                else f"must be an integer >= {lo}, got {value!r}")
        return n

    parse.__name__ = "int"  # argparse names the type in "invalid int value" messages
    return parse


positive_int = int_range(1)
nonnegative_int = int_range(0)
seed_int = int_range(0, 2**63 - 1)  # what torch.Generator.manual_seed accepts without wrapping


def float_range(lo: float = -math.inf, hi: float = math.inf, *, lo_open: bool = False) -> Callable[[str], float]:
    """A finite float in ``[lo, hi]`` (``(lo, hi]`` with ``lo_open``); nan and inf are always refused."""

    def parse(value: str) -> float:
        try:
            x = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number, got {value!r}") from None
        if not math.isfinite(x):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {value!r}")
        if x < lo or x > hi or (lo_open and x == lo):
            raise argparse.ArgumentTypeError(f"must be {bounds}, got {value!r}")
        return x

    if hi == math.inf:
        bounds = f"a number {'>' if lo_open else '>='} {lo:g}"
    else:
        bounds = f"in {'(' if lo_open else '['}{lo:g}, {hi:g}]"

    parse.__name__ = "float"
    return parse


finite_float = float_range()
positive_float = float_range(0.0, lo_open=True)


# -- what several commands share (stdlib only, like the rest of this module) -----------------------------------------

EXIT_OK, EXIT_USER_ERROR, EXIT_USAGE, EXIT_CHECK_FAILED = 0, 1, 2, 3
SCHEDULER_CONFIG_HELP = ("the scheduler_config.json (or a folder holding it) of the schedule the model was trained "
                         "with; needed when the model directory has none (sample: must match the artifact's)")
# the calibration steps and samples each method uses when --steps / --samples are not given: "" for every method
# without its own (`MethodConfig.calibration_defaults`; kept in sync with the registry by a test)
CALIBRATION_DEFAULTS = {"": {"steps": 100, "samples": 16}, "ptq4dit": {"steps": 25, "samples": 32}}


class Parser(argparse.ArgumentParser):
    """Usage errors as one line (``ditq calibrate: error: ...``) and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def groups_arg(value: str) -> int | str:
    """``--groups``: a positive integer or ``auto``."""
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


def defaults_help(key: str) -> str:
    """``100; ptq4dit 25``: the value every method uses, then the methods with their own."""
    own = ", ".join(f"{m} {d[key]}" for m, d in CALIBRATION_DEFAULTS.items() if m and key in d)
    return f"{CALIBRATION_DEFAULTS[''][key]}{f'; {own}' if own else ''}"


def sampling_args(p: argparse.ArgumentParser, steps: int) -> None:
    """--steps, --scheduler, --cfg and --seed (calibrate and sample)."""
    p.add_argument("--steps", type=positive_int, default=steps,
                   help="sampler steps, at most the model's training timesteps (default: %(default)s)")
    p.add_argument("--scheduler", choices=("ddpm", "ddim", "dpmsolver"), default=None,
                   help="diffusers scheduler (default: the model's own)")
    p.add_argument("--cfg", type=float_range(0.0), default=3.0,
                   help="classifier-free guidance scale (default: %(default)s)")
    p.add_argument("--seed", type=seed_int, default=0, help="noise seed (default: %(default)s)")


def common_args(p: argparse.ArgumentParser, default: object) -> None:
    """--debug and -q, accepted before and after the subcommand: the subcommands' copies default to SUPPRESS so
    that they leave the top-level value alone unless given."""
    p.add_argument("--debug", action="store_true", default=default,
                   help="show tracebacks for user errors and Polygraphy's log")
    p.add_argument("-q", "--quiet", action="store_true", default=default, help="no progress bars")


def common_parent() -> argparse.ArgumentParser:
    """The parent parser every (sub)command parser gets: its own --debug and -q."""
    common = Parser(add_help=False)
    common_args(common, default=argparse.SUPPRESS)
    return common


def set_help(p: argparse.ArgumentParser, flag: str, text: str) -> None:
    next(a for a in p._actions if flag in a.option_strings).help = text


def check_groups_fit_steps(args: argparse.Namespace, method: str) -> None:
    """htg needs at least as many calibration timesteps as ``--groups`` (calibrate, demo): ``UsageError``."""
    if isinstance(args.groups, int) and method == "htg":
        steps = args.steps if args.steps is not None else calibration_default(method, "steps")
        if args.groups > steps:
            raise UsageError(f"--groups {args.groups} needs at least as many calibration timesteps, but --steps is "
                             f"{steps}; use --groups <= {steps} or more --steps")
