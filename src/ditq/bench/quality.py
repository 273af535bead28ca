"""Quality of a quantized backend against the FP model, from the same seeds and noise (DESIGN §7).

- per-step SQNR of the model output, teacher-forced on the FP trajectory's inputs (so it measures the model's
  quantization error at each timestep, not the drift of a diverging trajectory);
- final-image PSNR vs the FP images of the same seed;
- class accuracy and Fréchet distance on the digits classifier's penultimate features.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from ditq.core.cond import select
from ditq.core.metrics import psnr_db, sqnr_db
from ditq.core.sampler import Denoise, as_denoise
from ditq.models.loading import LoadedModel
from ditq.testbed.scoring import FPReference, ImageScorer, SamplingSpec, run_sampler


def _cfg_rows(batch: int, rows: int | None) -> torch.Tensor | slice:
    """The first ``rows`` conditional rows and their unconditional twins of a CFG batch [cond; uncond]."""
    if rows is None or 2 * rows >= batch or batch % 2:
        return slice(None)
    half = batch // 2
    return torch.cat([torch.arange(rows), half + torch.arange(rows)])


@torch.no_grad()
def evaluate(model: LoadedModel, denoise: Denoise, ref: FPReference, spec: SamplingSpec,
             scorer: ImageScorer | None, *, sqnr_rows: int | None = None,
             sample_images: bool = True) -> dict[str, Any]:
    """All metrics of one backend against ``ref`` (sampled with the same ``spec``).

    ``sqnr_rows``: teacher-force the per-step SQNR on that many images (and their CFG twins) instead of all.
    ``sample_images=False``: per-step SQNR only (no sampling run, no image metrics).
    """
    per_step = []
    denoise = as_denoise(denoise)
    for (x, t, y), out in zip(ref.inputs, ref.outputs):
        idx = _cfg_rows(x.shape[0], sqnr_rows)
        per_step.append(sqnr_db(denoise(x[idx], t[idx], select(y, idx)), out[idx]))
    result: dict[str, Any] = {
        "sqnr_per_step_db": per_step, "timesteps": ref.timesteps,
        "sqnr_mean_db": float(np.mean([s for s in per_step if math.isfinite(s)])) if per_step else math.nan,
        "sqnr_min_db": float(np.min(per_step)),
    }
    if not sample_images:
        return result
    images = run_sampler(model, denoise, ref.labels, spec)
    result.update(psnr_db=psnr_db(images, ref.images), images=images)
    if scorer is not None:
        result.update(scorer.score(images, ref.labels))
    return result
