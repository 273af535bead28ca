"""``fake-quant``: the folded model with fake quantization in torch, one copy per timestep group (the numerical
reference of the exported graphs). Reads a recipe directory, or the recipe an ONNX directory was exported from.

(Named ``torch`` before the ``torch-int8`` backend existed; ``torch`` stays a deprecated alias in ``ditq sample``
and ``QuantizedTransformer``.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ditq.artifacts.recipe import Recipe
from ditq.errors import DitqError
from ditq.models.loading import LoadedModel, check_recipe_model, load_model
from ditq.models.quantized import folded_transformer, group_denoiser
from ditq.models.schedule import SchedulerSpec
from ditq.runtime.backends.base import GroupedBackend, read_manifest_kind

NAME = "fake-quant"
__all__ = ["NAME", "fake_quant_backend", "folded_transformer", "group_denoiser", "open_artifact", "open_recipe",
           "torch_backend"]


def fake_quant_backend(model: LoadedModel, recipe: Recipe | None) -> GroupedBackend:
    """Per-group fake-quantized models (built once); ``recipe=None`` gives the unquantized model."""
    classes = model.num_classes if model.kind == "dit" else None
    if recipe is None:
        den = model.denoiser()
        return GroupedBackend.from_loader(f"{NAME}-fp", [(0, model.num_train_timesteps - 1)],
                                          lambda: [torch.no_grad()(den.predict)], num_classes=classes)
    check_recipe_model(model, recipe)
    return GroupedBackend.from_loader(
        f"{NAME}-{recipe.method}", [g.interval for g in recipe.groups],
        lambda: [torch.no_grad()(group_denoiser(model, recipe, g.group_id).predict) for g in recipe.groups],
        num_classes=classes)


torch_backend = fake_quant_backend  # the name before the torch-int8 backend existed


def open_recipe(path: Path, scheduler: SchedulerSpec | None) -> tuple[Recipe, LoadedModel, dict[str, Any]]:
    """The recipe in ``path`` (a recipe directory, or the recipe an ONNX directory was exported from, refused if
    it changed since the export), its model loaded with ``scheduler``, and what sampling needs to know."""
    from ditq.artifacts.onnx import OnnxArtifact

    if read_manifest_kind(path) == OnnxArtifact.KIND:
        recipe_dir = OnnxArtifact.load(path, verify=False).check_parent()
        if recipe_dir is None:
            raise DitqError(f"the recipe {path} was exported from is not found; pass the recipe directory instead")
        path = recipe_dir
    recipe = Recipe.load(path)
    model = load_model(recipe.model_source, scheduler=scheduler, expected_scheduler=recipe.scheduler_config,
                       expected_as=f"the recipe {path}")
    recipe.check_model(model, path)
    info = {"conditioning": model.conditioning, "sample_shape": list(model.sample_shape),
            "scheduler_config": model.scheduler_config, "kind": model.kind,
            "config": {k: v for k, v in dict(model.config).items() if not k.startswith("_")}}
    return recipe, model, info


def open_artifact(path: Path, *, fp: bool = False, threads: int | None = None, fuse: bool | None = None,
                  scheduler: SchedulerSpec | None = None) -> tuple[GroupedBackend, dict[str, Any]]:
    """``open_backend(path, "fake-quant")``; ``threads`` and ``fuse`` (ONNX Runtime settings) do not apply."""
    recipe, model, info = open_recipe(path, scheduler)
    return fake_quant_backend(model, None if fp else recipe), info
