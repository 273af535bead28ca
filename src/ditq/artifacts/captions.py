"""The caption-table file format and what a model or artifact is conditioned on, as named tensors: class labels
(DiT) or caption embeddings (PixArt).

Every stage passes conditioning as ``Cond = {input name: batch tensor}``; the names are the ONNX graph's inputs
after ``hidden_states`` and ``timestep``. A ``Conditioning`` turns condition ids (class labels, or rows of a
caption table) into a ``Cond`` and knows the unconditional ("null") condition classifier-free guidance uses.

Caption tables (``captions.safetensors``) hold text-encoder outputs, so nothing needs the text encoder at
calibration or sampling time: ``prompt_embeds`` [N, L, D], ``prompt_attention_mask`` [N, L], and the null
caption ``null_prompt_embeds`` [1, L, D] / ``null_prompt_attention_mask`` [1, L] (the encoding of the negative
prompt ``""``, what diffusers' PixArt pipelines use for CFG). D is whatever the text encoder gives (the model's
``caption_channels``: 4096 for T5-XXL). The two masks are optional: a table without them attends to every token
(a mask of ones). ``save_caption_table`` (also ``ditq.models.save_caption_table``) writes one from any prompt
embeddings, e.g. ``pipe.encode_prompt(prompts)`` of a PixArt pipeline.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ditq.core.cond import Cond
from ditq.errors import DitqError

CAPTIONS_FILE = "captions.safetensors"
CAPTION_KEYS = ("prompt_embeds", "prompt_attention_mask", "null_prompt_embeds", "null_prompt_attention_mask")
REQUIRED_CAPTION_KEYS = ("prompt_embeds", "null_prompt_embeds")  # a missing mask means "every token": ones


@dataclass(frozen=True)
class Conditioning:
    """Class labels (``kind="class"``: ids 0..num-1, null id ``num``) or a caption table (``kind="caption"``)."""

    kind: str
    num: int
    embeds: torch.Tensor | None = None  # [N, L, D]
    mask: torch.Tensor | None = None  # [N, L]
    null_embeds: torch.Tensor | None = None  # [1, L, D]
    null_mask: torch.Tensor | None = None  # [1, L]

    @classmethod
    def classes(cls, num_classes: int) -> Conditioning:
        return cls("class", int(num_classes))

    @classmethod
    def captions(cls, table: Mapping[str, torch.Tensor], source: str = "caption table") -> Conditioning:
        missing = [k for k in REQUIRED_CAPTION_KEYS if k not in table]
        if missing:
            raise DitqError(f"{source} lacks {', '.join(missing)}; a caption table holds prompt_embeds [N, L, D] "
                            "and the null (negative-prompt \"\") caption null_prompt_embeds [1, L, D], with optional "
                            "prompt_attention_mask [N, L] / null_prompt_attention_mask [1, L] (all ones when absent); "
                            "write it with ditq.models.save_caption_table")
        e, ne = table["prompt_embeds"].float(), table["null_prompt_embeds"].float()
        m = table["prompt_attention_mask"].float() if "prompt_attention_mask" in table else _ones(e)
        nm = table["null_prompt_attention_mask"].float() if "null_prompt_attention_mask" in table else _ones(ne)
        if e.dim() != 3 or m.shape != e.shape[:2] or ne.shape != (1, *e.shape[1:]) or nm.shape != (1, e.shape[1]):
            raise DitqError(f"{source}: expected prompt_embeds [N, L, D], masks [N, L] and a null caption [1, L, D]; "
                            f"got {tuple(e.shape)}, {tuple(m.shape)}, {tuple(ne.shape)}, {tuple(nm.shape)}")
        return cls("caption", int(e.shape[0]), e, m, ne, nm)

    def inputs(self) -> dict[str, dict[str, Any]]:
        """Per input: dtype ("int64" or "float": the graph's float type) and the shape after the batch axis."""
        if self.kind == "class":
            return {"class_labels": {"dtype": "int64", "shape": []}}
        assert self.embeds is not None
        _, length, dim = self.embeds.shape
        return {"encoder_hidden_states": {"dtype": "float", "shape": [length, dim]},
                "encoder_attention_mask": {"dtype": "float", "shape": [length]}}

    def cond(self, ids: Sequence[int] | torch.Tensor) -> Cond:
        idx = torch.as_tensor(ids, dtype=torch.int64).reshape(-1)
        if idx.numel() == 0 or int(idx.min()) < 0 or int(idx.max()) >= self.num:
            what = "class labels" if self.kind == "class" else "caption indices"
            raise DitqError(f"{what} must lie in [0, {self.num - 1}], got {idx.tolist()}")
        if self.kind == "class":
            return {"class_labels": idx}
        assert self.embeds is not None and self.mask is not None
        return {"encoder_hidden_states": self.embeds[idx], "encoder_attention_mask": self.mask[idx]}

    def null(self, n: int = 1) -> Cond:
        """The unconditional condition, batch ``n``: the null class or the null caption."""
        if self.kind == "class":
            return {"class_labels": torch.full((n,), self.num, dtype=torch.int64)}
        assert self.null_embeds is not None and self.null_mask is not None
        return {"encoder_hidden_states": self.null_embeds.expand(n, -1, -1),
                "encoder_attention_mask": self.null_mask.expand(n, -1)}

    def save(self, path: Path) -> None:
        if self.kind == "caption":
            save_caption_table(path, self.embeds, self.mask, self.null_embeds, self.null_mask)  # type: ignore[arg-type]


def _ones(embeds: torch.Tensor) -> torch.Tensor:
    """The all-tokens mask of ``embeds`` [N, L, D] (a shape mismatch is reported by the caller)."""
    return torch.ones(embeds.shape[:2]) if embeds.dim() == 3 else torch.ones(0)


def save_caption_table(path: Path, prompt_embeds: torch.Tensor, prompt_attention_mask: torch.Tensor | None,
                       null_prompt_embeds: torch.Tensor, null_prompt_attention_mask: torch.Tensor | None = None
                       ) -> Path:
    """Write a caption table (safetensors) from prompt embeddings [N, L, D] (any D) and the null
    (negative-prompt) embedding [1, L, D]; a mask given as ``None`` is written as ones (every token attended)."""
    from safetensors.torch import save_file

    null_prompt_embeds = null_prompt_embeds.reshape(1, *prompt_embeds.shape[1:])
    table = {"prompt_embeds": prompt_embeds,
             "prompt_attention_mask": _ones(prompt_embeds) if prompt_attention_mask is None else prompt_attention_mask,
             "null_prompt_embeds": null_prompt_embeds,
             "null_prompt_attention_mask": _ones(null_prompt_embeds) if null_prompt_attention_mask is None
             else null_prompt_attention_mask.reshape(1, prompt_embeds.shape[1])}
    Conditioning.captions(table)  # validate before writing
    save_file({k: v.detach().float().contiguous().cpu() for k, v in table.items()}, str(path))
    return Path(path)


def load_caption_table(path: Path) -> Conditioning:
    from safetensors.torch import load_file

    try:
        table = load_file(str(path))
    except Exception as err:  # safetensors raises its own error types for damaged files
        raise DitqError(f"{path} is not a readable safetensors caption table: {str(err).splitlines()[0]}") from err
    return Conditioning.captions(table, str(path))


def conditioning_from_info(model_info: Mapping[str, Any], root: Path) -> Conditioning:
    """The conditioning an artifact (ONNX or engine set) serves: classes, or the caption table it carries."""
    if model_info.get("conditioning", "class") == "class":
        return Conditioning.classes(int(model_info["num_classes"]))
    path = Path(root) / CAPTIONS_FILE
    if not path.is_file():
        raise DitqError(f"{root} serves a text-conditioned model but has no {CAPTIONS_FILE}; re-export it")
    return load_caption_table(path)
