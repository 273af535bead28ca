"""What every method sees (``Context``) and returns (``Solution``), the registry, and shared scale helpers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import torch

from ditq.calibration.groups import Grouping
from ditq.calibration.quantizers import scale_from_amax, search_act_scale
from ditq.calibration.stats import SiteStats
from ditq.errors import DitqError
from ditq.models.dit import Site


@dataclass
class Context:
    sites: list[Site]
    stats: dict[str, SiteStats]
    timesteps: list[int]  # the rows of every SiteStats, in sampler order
    weights: dict[str, list[torch.Tensor]]  # site -> weights [N, C] of the Linears reading it
    num_train_timesteps: int
    w_bits: int
    a_bits: int

    def rows_of(self, grouping: Grouping, group_id: int) -> list[int]:
        index = {t: i for i, t in enumerate(self.timesteps)}
        return [index[t] for t in grouping.members(group_id)]


@dataclass
class Solution:
    grouping: Grouping
    shifts: dict[str, torch.Tensor]  # site -> [G, C]
    smooth: dict[str, torch.Tensor]  # site -> [C]
    act_scales: dict[str, torch.Tensor]  # site -> [G]
    alphas: dict[str, float | None]
    weight_clip_search: bool = True


@dataclass(frozen=True)
class MethodConfig:
    name: ClassVar[str] = ""

    def solve(self, ctx: Context) -> Solution:
        raise NotImplementedError

    def params(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)


METHODS: dict[str, type[MethodConfig]] = {}
M = TypeVar("M", bound=type[MethodConfig])


def register_method(name: str) -> Callable[[M], M]:
    def deco(cls: M) -> M:
        cls.name = name
        METHODS[name] = cls
        return cls

    return deco


def method_config(name: str, **params: Any) -> MethodConfig:
    """Instantiate a registered method's config; unknown names and options are one-line errors."""
    if name not in METHODS:
        raise DitqError(f"unknown method {name!r}; choose one of {', '.join(sorted(METHODS))}")
    try:
        return METHODS[name](**params)
    except TypeError as err:
        raise DitqError(f"bad options for method {name!r}: {err}") from err


def pooled_range(st: SiteStats, rows: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    return st.ch_max[rows].amax(0), st.ch_min[rows].amin(0)


def act_scales_for(ctx: Context, site: Site, grouping: Grouping, shifts: torch.Tensor, smooth: torch.Tensor,
                   *, search: bool) -> tuple[torch.Tensor, float]:
    """Per-group activation scales of ``(x - z_g) / s``: exact amax from the stats, clip searched on the reservoir.

    Returns the scales [G] and the summed relative output error over groups (for comparing candidate ``s``).
    """
    st = ctx.stats[site.name]
    weights = [w * smooth for w in ctx.weights[site.name]]
    scales, total = [], 0.0
    for g in range(len(grouping.segments)):
        rows = ctx.rows_of(grouping, g)
        hi, lo = pooled_range(st, rows)
        amax = float(torch.maximum(hi - shifts[g], shifts[g] - lo).div(smooth).amax())
        if search:
            x = (st.reservoir[rows].reshape(-1, st.reservoir.shape[-1]) - shifts[g]) / smooth
            scale, err = search_act_scale(x, weights, amax, a_bits=ctx.a_bits, w_bits=ctx.w_bits)
            total += err
        else:
            scale = float(scale_from_amax(amax, ctx.a_bits))
        scales.append(scale)
    return torch.tensor(scales, dtype=torch.float32), total
