"""Timestep groups: contiguous inclusive intervals tiling the training timestep axis [0, T-1], and the one
``group_of`` every stage uses (calibration's grouping, the recipe, the backends, validation)."""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass

from ditq.errors import DitqError


@dataclass(frozen=True)
class TimestepGroups:
    """``intervals[g] = (lo, hi)``: group ``g`` serves the training timesteps lo..hi (inclusive).

    Example:
        >>> TimestepGroups(((0, 365), (366, 999))).group_of(400.0)
        1
    """

    intervals: tuple[tuple[int, int], ...]

    def __post_init__(self) -> None:
        ivs = tuple((int(lo), int(hi)) for lo, hi in self.intervals)
        object.__setattr__(self, "intervals", ivs)
        if not ivs or ivs[0][0] != 0 or any(lo > hi for lo, hi in ivs) or any(
                b[0] != a[1] + 1 for a, b in zip(ivs, ivs[1:])):
            raise DitqError(f"timestep groups must be contiguous intervals starting at 0, got {list(ivs)}")

    @classmethod
    def of(cls, intervals: Sequence[Sequence[int]]) -> TimestepGroups:
        return cls(tuple((int(lo), int(hi)) for lo, hi in intervals))

    @property
    def num_train_timesteps(self) -> int:
        return self.intervals[-1][1] + 1

    def __len__(self) -> int:
        return len(self.intervals)

    def group_of(self, timestep: float) -> int:
        """The group serving ``timestep`` (a float is rounded to the nearest training timestep); DitqError for a
        timestep outside [0, T-1] or not finite."""
        t = float(timestep)
        if math.isfinite(t) and 0 <= (step := int(round(t))) < self.num_train_timesteps:
            return bisect.bisect_right([lo for lo, _ in self.intervals], step) - 1
        raise DitqError(f"timestep {timestep} is outside the training timestep range [0, "
                        f"{self.num_train_timesteps - 1}] this model was calibrated on; pass timesteps from a "
                        "scheduler with the model's training schedule")
