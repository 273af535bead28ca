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
