"""Error metrics against a reference, one definition each: SQNR, noise ratio, PSNR, cosine similarity.

SQNR (dB) = 10 log10(sum(ref^2) / sum((out - ref)^2)), in float64, +inf when identical; the validation report,
the quality benchmark and the methods' searches all use these.
"""

from __future__ import annotations

import math

import numpy as np
import torch


def noise_ratio(out: torch.Tensor, ref: torch.Tensor) -> float:
    """``sum((out - ref)^2) / sum(ref^2)`` in float64 (the reciprocal of the SQNR as a power ratio)."""
    return float((out.double() - ref.double()).square().sum() / ref.double().square().sum().clamp_min(1e-30))


def ratio_db(noise_over_signal: float) -> float:
    """A noise-to-signal power ratio as SQNR in dB; +inf for zero noise."""
    return math.inf if noise_over_signal == 0 else -10.0 * math.log10(noise_over_signal)


def sqnr_db(out: torch.Tensor, ref: torch.Tensor) -> float:
    """SQNR of ``out`` against ``ref`` in dB (float64; +inf when identical)."""
    noise = float((out.double() - ref.double()).square().sum())
    return math.inf if noise == 0 else 10 * math.log10(float(ref.double().square().sum()) / noise)


def sqnr_db_np(diff: np.ndarray, ref: np.ndarray) -> float:
    """SQNR in dB from flattened float64 arrays of the error and the reference (+inf when the error is zero)."""
    signal, noise = float(ref @ ref), float(diff @ diff)
    with np.errstate(divide="ignore"):
        return float("inf") if noise == 0.0 else float(10.0 * np.log10(signal / noise))


def cosine_np(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two flattened arrays; 1 for two zero arrays, NaN stays NaN."""
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0.0 or nb == 0.0:
        return 1.0 if na == nb else 0.0
    return float(np.clip(np.dot(a, b) / (na * nb), -1.0, 1.0))  # clip keeps NaN


def image_mse(images: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Per-image MSE [n] (float64) in [0, 1] pixel range (images in [-1, 1], clamped), floored at 1e-12."""
    return ((images.clamp(-1, 1) - ref.clamp(-1, 1)) / 2).square().flatten(1).mean(1).double().clamp_min(1e-12)


def psnr_db(images: torch.Tensor, ref: torch.Tensor) -> float:
    """Mean over images of the PSNR in [0, 1] pixel range (images in [-1, 1])."""
    return float((10 * torch.log10(1.0 / image_mse(images, ref))).mean())
