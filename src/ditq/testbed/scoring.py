"""Sampling the testbed models from fixed seeds, the FP reference trajectory, and the digits image scorer."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ditq.core.cond import Cond
from ditq.core.sampler import Denoise, make_scheduler, sample
from ditq.models.loading import LoadedModel


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
