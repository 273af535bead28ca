"""Symmetric quantizers (zero point 0, as TensorRT requires) and the error measures the scale searches use.

Rounding and saturation follow ONNX QuantizeLinear: ``clamp(round_half_even(x / scale), qmin, qmax)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

CLIP_GRID = (1.0, 0.95, 0.9, 0.85, 0.8, 0.7, 0.6, 0.5)


def qrange(bits: int) -> tuple[int, int]:
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def fake_quant(x: torch.Tensor, scale: torch.Tensor | float, bits: int = 8) -> torch.Tensor:
    qmin, qmax = qrange(bits)
    return torch.clamp(torch.round(x / scale), qmin, qmax) * scale


def quantize(x: torch.Tensor, scale: torch.Tensor, bits: int = 8) -> torch.Tensor:
    qmin, qmax = qrange(bits)
    return torch.clamp(torch.round(x / scale), qmin, qmax)


def scale_from_amax(amax: torch.Tensor | float, bits: int = 8) -> torch.Tensor:
    amax_t = torch.as_tensor(amax, dtype=torch.float32)
    return torch.clamp(amax_t, min=1e-8) / qrange(bits)[1]


def weight_scales(weight: torch.Tensor, bits: int = 8, *, search: bool = True) -> torch.Tensor:
    """Per-output-channel scales of ``weight`` [N, K]: max, or the clip ratio from CLIP_GRID with least MSE."""
    amax = weight.abs().amax(1).clamp_min(1e-8)
    if not search:
        return scale_from_amax(amax, bits)
    best_err, best = None, None
    for ratio in CLIP_GRID:
        scale = scale_from_amax(amax * ratio, bits)
        err = (fake_quant(weight, scale[:, None], bits) - weight).square().sum(1)
        if best_err is None:
            best_err, best = err, scale
        else:
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best = torch.where(better, scale, best)
    assert best is not None
    return best


def search_act_scale(
    x: torch.Tensor, weights: Sequence[torch.Tensor], amax: float, *, a_bits: int, w_bits: int,
    grid: Sequence[float] = CLIP_GRID,
) -> tuple[float, float]:
    """The clip of ``amax`` (from ``grid``) whose ``Q(x) Q(W)^T`` has least relative error against ``x W^T``.

    The error is summed over the Linears sharing ``x``; returns (scale, error).
    """
    wq = torch.cat([fake_quant(w, weight_scales(w, w_bits, search=False)[:, None], w_bits) for w in weights])
    ref = x @ torch.cat(list(weights)).T
    den = float(ref.square().sum()) or 1e-30
    best = (float("inf"), 0.0)
    for ratio in grid:
        scale = float(scale_from_amax(amax * ratio, a_bits))
        err = float((fake_quant(x, scale, a_bits) @ wq.T - ref).square().sum()) / den
        if err < best[0]:
            best = (err, scale)
    return best[1], best[0]
