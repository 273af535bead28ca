"""What the stages share about a model: its quantized sites and the denoiser forward export and runtime use."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ditq.core.cond import Cond


@dataclass(frozen=True)
class Site:
    """One quantized activation: the input shared by ``linears``, and how its shift/scale fold away.

    fold = "adaln": into rows ``shift_chunk``/``scale_chunk`` of the modulation Linear ``producer``;
           "v_proj": into the value projection ``producer`` (softmax rows sum to one);
           "table": the shift into row ``shift_chunk`` of the block's ``scale_shift_table`` ``producer``
                    (PixArt's adaLN-single); the scale's time-dependent part comes from a Linear all blocks
                    share, so a channel scale needs an explicit Mul;
           "explicit": an explicit per-group Sub/Mul before the quantizer (no linear producer, e.g. after GELU).
    """

    name: str
    linears: tuple[str, ...]
    fold: str
    producer: str | None = None
    shift_chunk: int = -1
    scale_chunk: int = -1
    num_chunks: int = 0

    @property
    def free_shift(self) -> bool:
        """Whether a channel shift folds away exactly (no run-time op)."""
        return self.fold != "explicit"

    @property
    def free_scale(self) -> bool:
        """Whether a channel scale folds away exactly (no run-time op)."""
        return self.fold in ("adaln", "v_proj")



class Denoiser(nn.Module):
    """``(hidden_states, timestep, *conditioning) -> eps``: the forward that export and the runtime share.

    ``forward`` takes the conditioning tensors positionally, in ``cond_names`` order (the ONNX input order);
    ``predict(x, t, cond)`` takes them as a ``Cond`` mapping. Learned-sigma outputs are cut to the eps half.
    """

    cond_names: tuple[str, ...] = ()

    def __init__(self, transformer: nn.Module) -> None:
        super().__init__()
        self.m = transformer
        cfg = transformer.config  # type: ignore[union-attr]
        self.learned_sigma = cfg.out_channels == 2 * cfg.in_channels

    def _eps(self, out: torch.Tensor, channels: int) -> torch.Tensor:
        return out[:, :channels] if self.learned_sigma else out

    def predict(self, x: torch.Tensor, t: torch.Tensor, cond: Cond) -> torch.Tensor:
        return self(x, t, *(cond[k] for k in self.cond_names))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """``den(x, t, cond)`` with a ``Cond`` mapping is ``den.predict(x, t, cond)``; tensors go to ``forward``."""
        if len(args) == 3 and isinstance(args[2], Mapping) and not kwargs:
            return self.predict(*args)
        return super().__call__(*args, **kwargs)


@contextlib.contextmanager
def swapped_modules(modules: Mapping[str, nn.Module], replacements: Mapping[str, nn.Module]) -> Iterator[None]:
    """Inside the block, each dotted name of ``replacements`` points at its module in the tree whose
    ``named_modules()`` are ``modules``; the originals are put back on exit (an exception too)."""
    originals = {}
    for name, module in replacements.items():
        parent, _, attr = name.rpartition(".")
        originals[name] = getattr(modules[parent], attr)
        setattr(modules[parent], attr, module)
    try:
        yield
    finally:
        for name, module in originals.items():
            parent, _, attr = name.rpartition(".")
            setattr(modules[parent], attr, module)
