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
        """The transformer's ``timestep`` argument (keyword, or its second positional argument)."""
        t = kwargs.get("timestep", args[1] if len(args) > 1 else None)
        if t is None:
            raise DitqError("the calibration loop called the transformer without a timestep; pass timestep=... "
                            "as diffusers pipelines do")
        ts = torch.as_tensor(t, dtype=torch.float64).reshape(-1)
        if ts.numel() == 0 or not bool(torch.isfinite(ts).all()) or not bool((ts == ts[0]).all()):
            raise DitqError(f"every row of a calibration call must share one finite timestep, got {ts.tolist()[:8]}")
        self.timestep = int(round(float(ts[0])))

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
