"""Caption tables from a diffusers PixArt pipeline's own text encoder, and fixed random ones for tests.

The file format and ``Conditioning`` live in ``ditq.artifacts.captions`` (they travel with recipes, ONNX and engine
sets); ``ditq.models.save_caption_table`` is the same function.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ditq.artifacts.captions import Conditioning, save_caption_table
from ditq.errors import DitqError


def save_pipeline_captions(pipe: Any, prompts: Sequence[str], path: Path, **encode_kwargs: Any) -> Path:
    """Encode ``prompts`` and the null caption (negative prompt ``""``) with a diffusers PixArt pipeline's own
    text encoder (``pipe.encode_prompt``) and write the caption table calibration and validation use."""
    table = pipeline_caption_table(pipe, prompts, **encode_kwargs)
    return save_caption_table(path, table.embeds, table.mask, table.null_embeds, table.null_mask)  # type: ignore


def pipeline_caption_table(pipe: Any, prompts: Sequence[str], **encode_kwargs: Any) -> Conditioning:
    """The caption table of ``prompts`` and the null caption (negative prompt ``""``), encoded by a diffusers
    PixArt pipeline's own ``encode_prompt``, in memory (``save_pipeline_captions`` writes it)."""
    if not prompts or isinstance(prompts, str):
        raise DitqError("give at least one calibration prompt" if not prompts else
                        "prompts must be a list of strings, not one string")
    with torch.no_grad():
        emb, mask, null, null_mask = pipe.encode_prompt(list(prompts), do_classifier_free_guidance=True,
                                                        negative_prompt="", **encode_kwargs)
    return Conditioning.captions({"prompt_embeds": emb.detach().float().cpu(),
                                  "prompt_attention_mask": mask.detach().float().cpu(),
                                  "null_prompt_embeds": null[:1].detach().float().cpu(),
                                  "null_prompt_attention_mask": null_mask[:1].detach().float().cpu()},
                                 "the pipeline's prompt encoding")


def random_caption_table(num: int, length: int, dim: int, *, tokens: int | Sequence[int] = 8, seed: int = 0,
                         std: float = 0.3) -> dict[str, torch.Tensor]:
    """A fixed random caption table (tests, architecture-only runs): ``tokens`` valid tokens per caption, the
    rest padding as a T5 pipeline pads them; the null caption has one valid token, like T5's encoding of ``""``."""
    gen = torch.Generator().manual_seed(seed)
    counts = [tokens] * num if isinstance(tokens, int) else list(tokens)
    embeds = torch.randn(num, length, dim, generator=gen) * std
    mask = torch.zeros(num, length)
    for i, c in enumerate(counts):
        mask[i, : max(1, min(length, c))] = 1
    embeds = embeds * mask[..., None]
    null = torch.zeros(1, length, dim)
    null[0, 0] = torch.randn(dim, generator=gen) * std
    null_mask = torch.zeros(1, length)
    null_mask[0, 0] = 1
    return {"prompt_embeds": embeds, "prompt_attention_mask": mask, "null_prompt_embeds": null,
            "null_prompt_attention_mask": null_mask}


