"""Several calibration seeds: per-image PSNR of a cell, the mean and spread of its metrics over seeds, and the
paired comparison of HTG against the best one-scale static peer (a bootstrap over images, numpy only).

PSNR in two forms, both vs the FP images of the same noise: ``psnr_global_db`` pools the MSE over all images,
``psnr_db`` averages the per-image PSNR (``core.metrics.psnr_db``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ditq.core.metrics import image_mse

# the metrics whose mean and spread over calibration seeds the table shows
SEED_METRICS = ("psnr_global_db", "psnr_db", "sqnr_mean_db", "sqnr_min_db", "class_accuracy", "frechet_distance")
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0


def image_metrics(images: torch.Tensor, ref: torch.Tensor) -> dict[str, Any]:
    """Per-image PSNR (dB, [0, 1] pixel range from [-1, 1] images) and the PSNR of the MSE pooled over images."""
    mse = image_mse(images, ref)
    return {"psnr_global_db": float(10 * torch.log10(1.0 / mse.mean())),
            "psnr_per_image_db": [round(float(v), 4) for v in 10 * torch.log10(1.0 / mse)]}


def global_psnr(per_image_db: np.ndarray) -> float:
    """The pooled-MSE PSNR of images whose per-image PSNRs are ``per_image_db`` (last axis: images)."""
    return float(10 * np.log10(1.0 / np.mean(10.0 ** (-np.asarray(per_image_db) / 10.0))))


def _mean(values: list[float]) -> float:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (method, bits, steps) over its calibration seeds: each of ``SEED_METRICS`` as the mean, with
    ``<metric>_min`` / ``<metric>_max`` beside it; ``calib_seeds`` lists the seeds. Per-seed values stay in
    ``rows``."""
    by_key: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    for r in rows:
        by_key.setdefault((r["method"], r["bits"], r["steps"]), []).append(r)
    out = []
    for (method, bits, steps), group in by_key.items():
        first = group[0]
        row: dict[str, Any] = {"method": method, "bits": bits, "steps": steps, "backend": first.get("backend"),
                               "dynamic": first.get("dynamic"), "calib_seeds": [r.get("calib_seed") for r in group]}
        for k in SEED_METRICS:
            values = [r[k] for r in group if r.get(k) is not None]
            if values:
                row[k], row[f"{k}_min"], row[f"{k}_max"] = _mean(values), min(values), max(values)
        groups = sorted({r["groups"] for r in group if r.get("groups") is not None})
        row["groups"] = (groups[0] if len(groups) == 1 else f"{groups[0]}–{groups[-1]}") if groups else None
        for k in ("calibration_seconds", "artifact_bytes"):
            if any(r.get(k) is not None for r in group):
                row[k] = _mean([r[k] for r in group if r.get(k) is not None])
        for k in ("ort_vs_torch_sqnr_db", "ort_vs_torch_margin_db"):  # the worst seed
            if any(r.get(k) is not None for r in group):
                row[k] = min(r[k] for r in group if r.get(k) is not None)
        out.append(row)
    return out


def bootstrap_ci(per_image: np.ndarray, stat: Callable[[np.ndarray], float], *,
                 resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> tuple[float, float]:
    """95 % percentile interval of ``stat`` over images resampled with replacement (``per_image``: [..., images];
    the same image indices for every leading row, so paired rows stay paired)."""
    rng = np.random.default_rng(seed)
    n = per_image.shape[-1]
    draws = np.array([stat(per_image[..., rng.integers(0, n, n)]) for _ in range(resamples)])
    lo, hi = np.percentile(draws, [2.5, 97.5])
    return float(lo), float(hi)


def _per_image(rows: list[dict[str, Any]]) -> np.ndarray:
    """[seeds, images] per-image PSNR of one (method, bits, steps) over its seeds."""
    return np.array([r["psnr_per_image_db"] for r in rows], dtype=np.float64)


def is_one_scale_peer(method: str) -> bool:
    """ditq's SmoothQuant (any variant) and Model Optimizer's static rows: one scale per tensor for all timesteps."""
    return method.split(":")[0] == "smoothquant" or method.startswith("modelopt ")


def paired_comparisons(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (htg variant, bits, steps): HTG minus the best one-scale static peer (highest mean global PSNR over its
    seeds; ditq smoothquant or a Model Optimizer row), with 95 % bootstrap intervals over images.

    Images are paired by the evaluation noise (the same index is the same FP image); each image's PSNR is first
    averaged over the calibration seeds of each side. ``psnr_db_diff``: mean of the per-image PSNR differences;
    ``psnr_global_db_diff``: difference of the pooled-MSE PSNRs (the seeds' MSEs pooled too).
    """
    by_key: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    for r in rows:
        if r.get("psnr_per_image_db") and not r.get("dynamic"):
            by_key.setdefault((r["method"], r["bits"], r["steps"]), []).append(r)
    out = []
    for (method, bits, steps), htg_rows in by_key.items():
        if method.split(":")[0] != "htg":
            continue
        peers = {m: rs for (m, b, s), rs in by_key.items() if b == bits and s == steps and is_one_scale_peer(m)}
        if not peers:
            continue
        best = max(peers, key=lambda m: global_psnr(_per_image(peers[m])))
        a, b = _per_image(htg_rows), _per_image(peers[best])
        if a.shape[-1] != b.shape[-1]:
            continue
        pair = np.stack([a.mean(0), b.mean(0)])  # [2, images]: per-image PSNR averaged over each side's seeds
        mse_a, mse_b = 10.0 ** (-a / 10.0), 10.0 ** (-b / 10.0)

        def diff_mean(p: np.ndarray) -> float:
            return float(np.mean(p[0] - p[1]))

        def diff_global(p: np.ndarray, k: int = a.shape[0]) -> float:  # p: [seeds, images] MSEs, HTG's k first
            return float(10 * np.log10(np.mean(p[k:]) / np.mean(p[:k])))

        mses = np.concatenate([mse_a, mse_b])
        out.append({"method": method, "bits": bits, "steps": steps, "peer": best, "images": int(a.shape[-1]),
                    "htg_seeds": [r.get("calib_seed") for r in htg_rows],
                    "peer_seeds": [r.get("calib_seed") for r in peers[best]],
                    "psnr_db_diff": diff_mean(pair), "psnr_db_diff_ci95": list(bootstrap_ci(pair, diff_mean)),
                    "psnr_global_db_diff": diff_global(mses),
                    "psnr_global_db_diff_ci95": list(bootstrap_ci(mses, diff_global)),
                    "bootstrap": {"resamples": BOOTSTRAP_RESAMPLES, "rng_seed": BOOTSTRAP_SEED}})
    return out
