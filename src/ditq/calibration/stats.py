"""Per-timestep, per-channel activation statistics at every quantized site, without keeping all activations.

For each site and calibration timestep: channel max and min, the sum of squares (signal power), and a small
seeded reservoir of token rows that the scale searches (alpha, activation clip) evaluate output error on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from ditq.core.sites import Site
from ditq.errors import DitqError


@dataclass
class SiteStats:
    """Statistics of one site, rows ordered like the collector's ``timesteps``."""

    ch_max: torch.Tensor  # [T, C]
    ch_min: torch.Tensor  # [T, C]
    sumsq: torch.Tensor  # [T]
    count: torch.Tensor  # [T] number of scalars seen
    reservoir: torch.Tensor  # [T, K, C] sampled token rows

    @property
    def power(self) -> float:
        return float(self.sumsq.sum() / self.count.sum().clamp_min(1))


@dataclass
class _Acc:
    ch_max: dict[int, torch.Tensor] = field(default_factory=dict)
    ch_min: dict[int, torch.Tensor] = field(default_factory=dict)
    sumsq: dict[int, float] = field(default_factory=dict)
    count: dict[int, int] = field(default_factory=dict)
    rows: dict[int, list[torch.Tensor]] = field(default_factory=dict)


def call_timestep(args: tuple[object, ...], kwargs: dict[str, object]) -> int:
    """The timestep of one transformer call: its ``timestep`` argument (keyword, or the second positional one)."""
    t = kwargs.get("timestep", args[1] if len(args) > 1 else None)
    if t is None:
        raise DitqError("the calibration loop called the transformer without a timestep; pass timestep=... "
                        "as diffusers pipelines do")
    ts = torch.as_tensor(t, dtype=torch.float64).reshape(-1)
    if ts.numel() == 0 or not bool(torch.isfinite(ts).all()) or not bool((ts == ts[0]).all()):
        raise DitqError(f"every row of a calibration call must share one finite timestep, got {ts.tolist()[:8]}")
    return int(round(float(ts[0])))


class ActivationCollector:
    """Forward pre-hooks on the first Linear of every site, keyed on the timestep of the current model call.

    ``timestep_from`` (the transformer): the timestep is read from that module's own call arguments (its
    ``timestep`` argument, as every diffusers pipeline passes it) by a forward pre-hook, so a calibration loop
    just calls the model (Model Optimizer's ``forward_loop(model)``). Without it, call ``set_timestep`` before
    each model call.
    """

    def __init__(self, model: nn.Module, sites: Sequence[Site], *, rows_per_call: int = 16, seed: int = 0,
                 prefix: str = "", timestep_from: nn.Module | None = None) -> None:
        self.sites = list(sites)
        self.rows_per_call = rows_per_call
        self.timestep: int | None = None
        self._gen = torch.Generator().manual_seed(seed)
        self._acc = {s.name: _Acc() for s in self.sites}
        modules = dict(model.named_modules())
        self._handles = [
            modules[prefix + s.linears[0]].register_forward_pre_hook(self._hook(s.name)) for s in self.sites
        ]
        if timestep_from is not None:
            self._handles.append(timestep_from.register_forward_pre_hook(self._read_timestep, with_kwargs=True))

    def set_timestep(self, timestep: int) -> None:
        self.timestep = int(timestep)

    def _read_timestep(self, _module: nn.Module, args: tuple[object, ...], kwargs: dict[str, object]) -> None:
        self.timestep = call_timestep(args, kwargs)

    def _hook(self, name: str) -> Callable[[nn.Module, tuple[torch.Tensor, ...]], None]:
        def hook(_module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            if self.timestep is None:
                raise RuntimeError("ActivationCollector.set_timestep must be called before each forward")
            x = inputs[0].detach().float().reshape(-1, inputs[0].shape[-1])
            acc, t = self._acc[name], self.timestep
            mx, mn = x.amax(0), x.amin(0)
            acc.ch_max[t] = torch.maximum(acc.ch_max[t], mx) if t in acc.ch_max else mx
            acc.ch_min[t] = torch.minimum(acc.ch_min[t], mn) if t in acc.ch_min else mn
            acc.sumsq[t] = acc.sumsq.get(t, 0.0) + float(x.square().sum())
            acc.count[t] = acc.count.get(t, 0) + x.numel()
            idx = torch.randperm(x.shape[0], generator=self._gen)[: self.rows_per_call]
            acc.rows.setdefault(t, []).append(x[idx].clone())

        return hook

    def remove(self) -> None:
        for h in self._handles:
            h.remove()

    @property
    def timesteps(self) -> list[int]:
        """Calibration timesteps seen, descending (the order a sampler visits them)."""
        first = self._acc[self.sites[0].name]
        return sorted(first.ch_max, reverse=True)

    def result(self) -> dict[str, SiteStats]:
        ts = self.timesteps
        out = {}
        for name, acc in self._acc.items():
            k = min(sum(r.shape[0] for r in acc.rows[t]) for t in ts)
            out[name] = SiteStats(
                ch_max=torch.stack([acc.ch_max[t] for t in ts]),
                ch_min=torch.stack([acc.ch_min[t] for t in ts]),
                sumsq=torch.tensor([acc.sumsq[t] for t in ts], dtype=torch.float64),
                count=torch.tensor([acc.count[t] for t in ts], dtype=torch.float64),
                reservoir=torch.stack([torch.cat(acc.rows[t])[:k] for t in ts]),
            )
        return out


class RangeCollector:
    """Exact per-group amax of transformed site inputs over a second run of the calibration loop.

    ``transforms[site](x, g)`` maps the site's input rows [n, C] in timestep group ``g`` (``group_of(timestep)``)
    to what its quantizer sees, e.g. the folded, rotated ``((x - z_g) / s) @ R``: a tensor whose range the
    per-channel statistics of the first pass do not bound. ``amax[site][g]`` is None for a group no call reached.
    """

    def __init__(self, model: nn.Module, sites: Sequence[Site],
                 transforms: dict[str, Callable[[torch.Tensor, int], torch.Tensor]], group_of: Callable[[int], int],
                 n_groups: int, *, timestep_from: nn.Module, prefix: str = "") -> None:
        self.group_of = group_of
        self.timestep: int | None = None
        self.amax: dict[str, list[float | None]] = {s.name: [None] * n_groups for s in sites if s.name in transforms}
        modules = dict(model.named_modules())
        self._handles = [timestep_from.register_forward_pre_hook(self._read_timestep, with_kwargs=True)]
        self._handles += [
            modules[prefix + s.linears[0]].register_forward_pre_hook(self._hook(s.name, transforms[s.name]))
            for s in sites if s.name in transforms
        ]

    def _read_timestep(self, _module: nn.Module, args: tuple[object, ...], kwargs: dict[str, object]) -> None:
        self.timestep = call_timestep(args, kwargs)

    def _hook(self, name: str, transform: Callable[[torch.Tensor, int], torch.Tensor]
              ) -> Callable[[nn.Module, tuple[torch.Tensor, ...]], None]:
        def hook(_module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            assert self.timestep is not None  # set by the transformer's pre-hook, which runs first
            g = self.group_of(self.timestep)
            x = inputs[0].detach().float().reshape(-1, inputs[0].shape[-1])
            amax = float(transform(x, g).abs().amax())
            seen = self.amax[name][g]
            self.amax[name][g] = amax if seen is None else max(seen, amax)

        return hook

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
