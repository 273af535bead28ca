"""Quality of a quantized backend against the FP model, from the same seeds and noise (DESIGN §7).

- per-step SQNR of the model output, teacher-forced on the FP trajectory's inputs (so it measures the model's
  quantization error at each timestep, not the drift of a diverging trajectory);
- final-image PSNR vs the FP images of the same seed;
- class accuracy and Fréchet distance on the digits classifier's penultimate features.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ditq.core.cond import Cond, select
from ditq.core.sampler import as_denoise, make_scheduler, sample
from ditq.models.loading import LoadedModel

Denoise = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class FPReference:
    labels: torch.Tensor
    images: torch.Tensor
    timesteps: list[float] = field(default_factory=list)
    inputs: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = field(default_factory=list)
    outputs: list[torch.Tensor] = field(default_factory=list)


@dataclass(frozen=True)
class SamplingSpec:
    steps: int = 100
    cfg_scale: float = 3.0
    seed: int = 0
    scheduler: str | None = None


def run_sampler(model: LoadedModel, denoise: Denoise, labels: torch.Tensor, spec: SamplingSpec,
                on_step: Any = None) -> torch.Tensor:
    return sample(denoise, make_scheduler(model.scheduler_config, spec.scheduler), model.cond(labels),
                  steps=spec.steps, cfg_scale=spec.cfg_scale, null_cond=model.null_cond(),
                  sample_shape=model.sample_shape, seed=spec.seed, on_step=on_step)


@torch.no_grad()
def fp_reference(model: LoadedModel, labels: torch.Tensor, spec: SamplingSpec) -> FPReference:
    ref = FPReference(labels=labels, images=torch.empty(0))

    def record(_i: int, x: torch.Tensor, t: torch.Tensor, y: Cond, eps: torch.Tensor) -> None:
        ref.timesteps.append(float(t[0]))
        ref.inputs.append((x.clone(), t.clone(), {k: v.clone() for k, v in y.items()}))
        ref.outputs.append(eps.clone())

    ref.images = run_sampler(model, model.denoiser(), labels, spec, on_step=record)
    return ref


def sqnr_db(out: torch.Tensor, ref: torch.Tensor) -> float:
    noise = float((out.double() - ref.double()).square().sum())
    return math.inf if noise == 0 else 10 * math.log10(float(ref.double().square().sum()) / noise)


def psnr_db(images: torch.Tensor, ref: torch.Tensor) -> float:
    """Mean over images of the PSNR in [0, 1] pixel range."""
    mse = ((images.clamp(-1, 1) - ref.clamp(-1, 1)) / 2).square().flatten(1).mean(1).double()
    return float((10 * torch.log10(1.0 / mse.clamp_min(1e-12))).mean())


class ImageScorer:
    """Class accuracy and Fréchet distance with the bundled digits classifier."""

    def __init__(self) -> None:
        from ditq.testbed.classifier import load_classifier, reference_features

        self.classifier = load_classifier()
        self.real = reference_features(self.classifier)

    def score(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        from ditq.testbed.classifier import class_accuracy, classifier_features, frechet_distance

        feats = classifier_features(images, self.classifier)
        return {"class_accuracy": class_accuracy(images, labels, self.classifier),
                "frechet_distance": frechet_distance(feats, self.real)}


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
