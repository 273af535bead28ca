"""A ``LoadedModel`` from an in-memory transformer (what ``load_model`` builds from a directory).

The Python API calibrates a transformer a user already holds (``pipe.transformer``, or one built in code). Its
identity for the recipe's model check is ``weights_sha256``: a hash of the class, the config and every tensor of
the state dict (and of the caption table, for PixArt), stable across processes, so an export from the same
weights (loaded again from the same source) passes the check and other weights are refused.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch
from torch import nn

from ditq.artifacts.captions import Conditioning
from ditq.errors import DitqError
from ditq.models.loading import LoadedModel, model_kind
from ditq.models.schedule import SchedulerSpec, scheduler_config_of

IN_MEMORY = "<in-memory>"


def weights_sha256(transformer: nn.Module, captions: Conditioning | None = None) -> str:
    """sha256 of the transformer's class, config and float32 weights (+ the caption table), in name order."""
    digest = hashlib.sha256(type(transformer).__name__.encode())
    config = {k: v for k, v in dict(getattr(transformer, "config", {})).items() if not k.startswith("_")}
    digest.update(json.dumps(config, sort_keys=True, default=str).encode())
    tensors = dict(transformer.state_dict())
    if captions is not None and captions.kind == "caption":
        tensors.update({f"captions.{k}": v for k, v in (("embeds", captions.embeds), ("mask", captions.mask),
                                                         ("null_embeds", captions.null_embeds),
                                                         ("null_mask", captions.null_mask)) if v is not None})
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu", torch.float32).contiguous()
        digest.update(f"{name}:{list(t.shape)}".encode())
        digest.update(t.numpy().tobytes())
    return digest.hexdigest()


def source_of(obj: Any) -> str:
    """Where diffusers loaded ``obj`` (a pipeline or model) from: its ``_name_or_path`` (a hub id or directory)."""
    config: Any = getattr(obj, "config", None)
    name = config.get("_name_or_path") if hasattr(config, "get") else None
    return str(name) if name else IN_MEMORY


def from_transformer(transformer: nn.Module, scheduler: SchedulerSpec | None, *,
                     captions: Conditioning | None = None, source: str | None = None) -> LoadedModel:
    """A ``LoadedModel`` around ``transformer`` (a ``DiTTransformer2DModel`` or ``PixArtTransformer2DModel`` in
    float32), with the scheduler (a diffusers scheduler, its config, or a ``scheduler_config.json`` path) whose
    training schedule defines the timestep axis, and for PixArt the caption table to calibrate on.

    No default scheduler: ditq never guesses the training schedule (``models.schedule``).
    """
    kind = model_kind(transformer)
    if scheduler is None:
        raise DitqError(f"no scheduler for the in-memory {type(transformer).__name__}; ditq will not guess the "
                        "training schedule: pass scheduler= (the pipeline's scheduler, its config, or a "
                        "scheduler_config.json path)")
    dtypes = {p.dtype for p in transformer.parameters()}
    if dtypes != {torch.float32}:
        raise DitqError(f"the transformer holds {sorted(str(d) for d in dtypes)} weights; ditq calibrates and "
                        "exports float32: load it with torch_dtype=torch.float32 (or call .float())")
    if kind == "pixart" and captions is None:
        raise DitqError("a PixArt transformer needs a caption table to calibrate on: pass prompts= with the "
                        "pipeline, or captions= (ditq.models.conditioning)")
    transformer.eval()
    config = scheduler_config_of(scheduler)
    return LoadedModel(transformer=transformer, scheduler_config=config,
                       source=source or source_of(transformer), sha256=weights_sha256(transformer, captions),
                       captions=captions if kind == "pixart" else None,
                       scheduler_source="the scheduler passed in")
