"""Group-aware routing: a batch whose rows sit at different timesteps, split by timestep group.

A server's dynamic batcher (Triton's) puts requests from different clients, at different timesteps, into one
batch. Each timestep group has its own quantized graph, so :func:`route` splits the batch's rows by group, runs
each group's callable on its rows only, and puts the results back in row order. DiT's and PixArt's timestep
embedding is per row and nothing else mixes rows, so this is exact: the same as running the rows one by one.

Torch-free on purpose (it works on numpy arrays and torch tensors alike, through indexing only), so that the
serving interpreter, which has numpy and onnxruntime but no torch, runs the very same code; the Triton model
repository carries a copy of this file next to its Python-backend router (``ditq.serve.triton``).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

GroupFn = Callable[[Any, Any, dict[str, Any]], Any]


class RouteError(ValueError):
    """A row the router cannot serve (a timestep outside the groups' axis, or not finite); one line."""


def group_ids(timesteps: Sequence[float], intervals: Sequence[Sequence[int]]) -> list[int]:
    """The group of each row's timestep (rounded to the nearest training timestep), intervals being contiguous
    inclusive ``(lo, hi)`` pairs tiling [0, T-1]; RouteError names the first timestep outside them."""
    los = [int(lo) for lo, _ in intervals]
    last = int(intervals[-1][1])
    out = []
    for t in timesteps:
        t = float(t)
        if not (math.isfinite(t) and 0 <= (step := int(round(t))) <= last):
            raise RouteError(f"timestep {t} is outside the training timestep range [0, {last}] this model was "
                             "calibrated on; pass timesteps from a scheduler with the model's training schedule")
        out.append(bisect.bisect_right(los, step) - 1)
    return out


def route(fns: Sequence[GroupFn], intervals: Sequence[Sequence[int]], x: Any, timestep: Any,
          cond: Mapping[str, Any], *, calls: list[int] | None = None) -> Any:
    """``fns[g](x[rows], timestep[rows], cond[rows])`` for each group ``g`` present in the batch, its outputs put
    back in row order. A batch in one group is passed through whole (no copy). ``calls`` (optional, one counter
    per group) counts the calls made. Works on numpy arrays and torch tensors (whichever ``x`` is)."""
    gids = group_ids([float(t) for t in timestep], intervals)
    if len(gids) != len(x):
        raise RouteError(f"timestep has {len(gids)} rows but hidden_states has {len(x)}; pass one timestep per row")
    present = sorted(set(gids))
    if len(present) == 1:
        g = present[0]
        if calls is not None:
            calls[g] += 1
        return fns[g](x, timestep, dict(cond))
    out = None
    for g in present:
        rows = [i for i, gi in enumerate(gids) if gi == g]
        idx = _index(x, rows)
        y = fns[g](x[idx], timestep[idx], {k: v[idx] for k, v in cond.items()})
        if calls is not None:
            calls[g] += 1
        if out is None:
            out = _empty_like(y, len(gids))
        out[idx] = y
    return out


def mixed(timestep: Sequence[float], intervals: Sequence[Sequence[int]]) -> bool:
    """Whether the rows of a batch fall in more than one group (a batch :func:`route` has to split)."""
    return len(set(group_ids([float(t) for t in timestep], intervals))) > 1


def _index(x: Any, rows: list[int]) -> Any:
    """Row indices in the array type of ``x`` (a torch tensor takes a LongTensor; numpy a list)."""
    if type(x).__module__.startswith("torch"):
        import torch

        return torch.tensor(rows, dtype=torch.long, device=x.device)
    return rows


def _empty_like(y: Any, n: int) -> Any:
    shape = (n, *tuple(y.shape[1:]))
    if type(y).__module__.startswith("torch"):
        return y.new_empty(shape)
    import numpy as np

    return np.empty(shape, dtype=y.dtype)
