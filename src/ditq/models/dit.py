"""DiT (diffusers ``DiTTransformer2DModel``): loading a local model directory and naming what ditq quantizes.

A model directory is laid out like a diffusers pipeline without a VAE (ditq's demo works in pixel space):
``transformer/`` (``save_pretrained`` output) and ``scheduler/scheduler_config.json``. A bare transformer
directory (``config.json`` + weights) is accepted too, with a default DDPM scheduler.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ditq.errors import DitqError

DIT_CLASS = "DiTTransformer2DModel"
DEFAULT_SCHEDULER = {"_class_name": "DDPMScheduler", "num_train_timesteps": 1000}


@dataclass(frozen=True)
class Site:
    """One quantized activation: the input shared by ``linears``, and how its shift/scale fold away.

    fold = "adaln": into rows ``shift_chunk``/``scale_chunk`` of the modulation Linear ``producer``;
           "v_proj": into the value projection ``producer`` (softmax rows sum to one);
           "explicit": an explicit per-group Sub/Mul before the quantizer (no linear producer, e.g. after GELU).
    """

    name: str
    linears: tuple[str, ...]
    fold: str
    producer: str | None = None
    shift_chunk: int = -1
    scale_chunk: int = -1
    num_chunks: int = 0


def quant_sites(transformer: nn.Module) -> list[Site]:
    """The quantized sites of a DiT, block by block: qkv, out-projection, fc1, fc2 (DESIGN §2)."""
    sites: list[Site] = []
    for i, _ in enumerate(transformer.transformer_blocks):  # type: ignore[union-attr]
        b = f"transformer_blocks.{i}"
        sites += [
            Site(f"{b}.attn1.qkv", (f"{b}.attn1.to_q", f"{b}.attn1.to_k", f"{b}.attn1.to_v"), "adaln",
                 f"{b}.norm1.linear", shift_chunk=0, scale_chunk=1, num_chunks=6),
            Site(f"{b}.attn1.to_out.0", (f"{b}.attn1.to_out.0",), "v_proj", f"{b}.attn1.to_v"),
            Site(f"{b}.ff.net.0.proj", (f"{b}.ff.net.0.proj",), "adaln",
                 f"{b}.norm1.linear", shift_chunk=3, scale_chunk=4, num_chunks=6),
            Site(f"{b}.ff.net.2", (f"{b}.ff.net.2",), "explicit"),
        ]
    return sites


class Denoiser(nn.Module):
    """``(hidden_states, timestep, class_labels) -> eps``: the DiT forward that export and the runtime share."""

    def __init__(self, transformer: nn.Module) -> None:
        super().__init__()
        self.m = transformer
        cfg = transformer.config  # type: ignore[union-attr]
        self.learned_sigma = cfg.out_channels == 2 * cfg.in_channels

    def forward(self, hidden_states: torch.Tensor, timestep: torch.Tensor, class_labels: torch.Tensor) -> torch.Tensor:
        out = self.m(hidden_states, timestep=timestep, class_labels=class_labels, return_dict=False)[0]
        if self.learned_sigma:
            out = out[:, : hidden_states.shape[1]]
        return out


@dataclass
class LoadedModel:
    transformer: nn.Module
    scheduler_config: dict[str, Any]
    source: str  # "demo" or the resolved model directory
    sha256: str

    @property
    def config(self) -> Any:
        return self.transformer.config  # type: ignore[union-attr]

    @property
    def num_classes(self) -> int:
        return int(self.config.num_embeds_ada_norm)

    @property
    def null_class(self) -> int:
        return self.num_classes

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        c = self.config
        return (int(c.in_channels), int(c.sample_size), int(c.sample_size))

    @property
    def num_train_timesteps(self) -> int:
        return int(self.scheduler_config.get("num_train_timesteps", 1000))

    def denoiser(self) -> Denoiser:
        return Denoiser(self.transformer).eval()


def _hash_dir(files: list[Path]) -> str:
    digest = hashlib.sha256()
    for f in sorted(files):
        digest.update(f.name.encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def resolve_source(source: str | Path) -> Path:
    if str(source) == "demo":
        from ditq.models.demo import demo_model_dir

        return demo_model_dir()
    return Path(source).expanduser().resolve()


def load_model(source: str | Path) -> LoadedModel:
    """Load ``demo`` or a local model directory; a one-line DitqError for anything that is not a DiT."""
    root = resolve_source(source)
    if not root.is_dir():
        raise DitqError(f"model directory {root} does not exist; pass a diffusers DiT directory or 'demo'")
    tdir = root / "transformer" if (root / "transformer" / "config.json").is_file() else root
    cfg_path = tdir / "config.json"
    if not cfg_path.is_file():
        raise DitqError(f"{root} has neither transformer/config.json nor config.json; it is not a diffusers model dir")
    try:
        cfg = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DitqError(f"{cfg_path} is not valid JSON; the model directory is damaged") from err
    cls = cfg.get("_class_name") if isinstance(cfg, dict) else None
    if cls != DIT_CLASS:
        raise DitqError(f"{cfg_path} describes a {cls!r}, not a {DIT_CLASS}; ditq supports DiT models here")
    weights = sorted(tdir.glob("*.safetensors"))
    if not weights:
        raise DitqError(f"{tdir} has no .safetensors weights; save the model with safe_serialization=True")
    from diffusers import DiTTransformer2DModel

    try:
        transformer = DiTTransformer2DModel.from_pretrained(tdir, low_cpu_mem_usage=False)
    except Exception as err:  # diffusers raises many types for damaged dirs
        raise DitqError(f"could not load the DiT in {tdir}: {str(err).splitlines()[0]}") from err
    transformer.eval().float()
    sched_path = root / "scheduler" / "scheduler_config.json"
    scheduler_config = json.loads(sched_path.read_text()) if sched_path.is_file() else dict(DEFAULT_SCHEDULER)
    return LoadedModel(
        transformer=transformer,
        scheduler_config=scheduler_config,
        source="demo" if str(source) == "demo" else str(root),
        sha256=_hash_dir([cfg_path, *weights]),
    )
