"""Architecture-only DiT models (random weights) for speed measurements: timing does not depend on weight values.

``random_model(name)`` builds a ``LoadedModel`` in memory from one of ``ARCH_CONFIGS``: nothing is downloaded or
written. diffusers zero-initialises DiT's adaLN modulation and output projection (every block would be an identity
and every activation after it zero); those parameters are re-drawn, as ``models/tiny.py`` does.

- ``tiny``: the test model (``models/tiny.py``), 8x8x1 latents, 16 tokens;
- ``demo-arch``: the bundled demo's architecture (16x16x1 digits, 64 tokens), for when its weights are absent;
- ``dit-s2-like``: DiT-S/2 (hidden 384, 12 layers, 6 heads, patch 2, 32x32x4 latents = 256 tokens), ~40M
  parameters with diffusers' per-block embedders: the CPU benchmark model;
- ``dit-xl2-256`` / ``dit-xl2-512``: DiT-XL/2 (hidden 1152, 28 layers, 16 heads) at 256 px (32x32x4 latents,
  256 tokens) and 512 px (64x64x4, 1024 tokens): GPU benchmark models (~675M parameters, 2.7 GB in FP32).
- ``pixart-alpha-512`` / ``pixart-alpha-1024`` / ``pixart-sigma-1024``: PixArt-α/Σ XL/2 (hidden 1152, 28 layers,
  16 heads, cross-attention to 4096-dim T5 captions of 120 / 300 tokens), as the published diffusers configs of
  PixArt-alpha/PixArt-XL-2-512x512, PixArt-XL-2-1024-MS and PixArt-Sigma-XL-2-1024-MS (~611M parameters); the
  1024 px α model conditions on resolution and aspect ratio. Random weights and a random caption table.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch

from ditq.errors import DitqError
from ditq.models.loading import DEFAULT_SCHEDULER, LoadedModel
from ditq.models.tiny import TINY_CAPTIONS, TINY_PIXART_CONFIG

_DIT = dict(norm_type="ada_norm_zero", num_embeds_ada_norm=1000, patch_size=2)

ARCH_CONFIGS: dict[str, dict[str, Any]] = {
    "tiny": dict(num_attention_heads=2, attention_head_dim=16, in_channels=1, out_channels=1, num_layers=2,
                 sample_size=8, patch_size=2, num_embeds_ada_norm=10, norm_type="ada_norm_zero"),
    "demo-arch": dict(num_attention_heads=4, attention_head_dim=32, in_channels=1, out_channels=1, num_layers=4,
                      sample_size=16, patch_size=2, num_embeds_ada_norm=10, norm_type="ada_norm_zero"),
    "dit-s2-like": dict(num_attention_heads=6, attention_head_dim=64, in_channels=4, out_channels=8, num_layers=12,
                        sample_size=32, **_DIT),
    "dit-xl2-256": dict(num_attention_heads=16, attention_head_dim=72, in_channels=4, out_channels=8,
                        num_layers=28, sample_size=32, **_DIT),
    "dit-xl2-512": dict(num_attention_heads=16, attention_head_dim=72, in_channels=4, out_channels=8,
                        num_layers=28, sample_size=64, **_DIT),
}

_PIXART = dict(num_attention_heads=16, attention_head_dim=72, in_channels=4, out_channels=8, num_layers=28,
               cross_attention_dim=1152, caption_channels=4096, patch_size=2, attention_bias=True,
               activation_fn="gelu-approximate", norm_type="ada_norm_single", norm_elementwise_affine=False,
               norm_eps=1e-6, num_embeds_ada_norm=1000)
PIXART_CONFIGS: dict[str, dict[str, Any]] = {
    "pixart-tiny": dict(TINY_PIXART_CONFIG),
    "pixart-alpha-512": dict(sample_size=64, **_PIXART),
    "pixart-alpha-1024": dict(sample_size=128, **_PIXART),
    "pixart-sigma-1024": dict(sample_size=128, interpolation_scale=2, use_additional_conditions=False, **_PIXART),
}
CAPTION_LENGTHS = {"pixart-tiny": TINY_CAPTIONS["length"], "pixart-alpha-512": 120, "pixart-alpha-1024": 120,
                   "pixart-sigma-1024": 300}
ARCH_CONFIGS.update(PIXART_CONFIGS)

# which device each architecture is meant to be timed on by default (``ditq bench speed``)
CPU_MODELS = ("tiny", "demo-arch", "dit-s2-like")
GPU_MODELS = ("dit-xl2-256", "dit-xl2-512")


def num_tokens(config: dict[str, Any]) -> int:
    return (int(config["sample_size"]) // int(config["patch_size"])) ** 2


def random_dit(name: str, seed: int = 0) -> torch.nn.Module:
    """A DiT (or PixArt) transformer of architecture ``name`` with seeded random weights and non-zero adaLN."""
    from diffusers import DiTTransformer2DModel, PixArtTransformer2DModel

    if name not in ARCH_CONFIGS:
        raise DitqError(f"unknown architecture {name!r}; choose one of {', '.join(ARCH_CONFIGS)}")
    torch.manual_seed(seed)
    cls = PixArtTransformer2DModel if name in PIXART_CONFIGS else DiTTransformer2DModel
    model = cls(**ARCH_CONFIGS[name])
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if not p.any():  # adaLN modulation and proj_out are zero-initialised
                p.normal_(0.0, 0.02 if p.dim() > 1 else 0.05)
            elif "to_" in pname or "ff.net" in pname:
                p.add_(torch.randn_like(p) * 0.01)
    return model.eval().float()


def random_model(name: str, seed: int = 0) -> LoadedModel:
    """``random_dit`` wrapped as a ``LoadedModel`` (default DDPM scheduler); its sha256 names config and seed."""
    transformer = random_dit(name, seed)
    key = json.dumps({"arch": name, "config": ARCH_CONFIGS[name], "seed": seed}, sort_keys=True)
    captions = None
    if name in PIXART_CONFIGS:
        from ditq.artifacts.captions import Conditioning
        from ditq.models.conditioning import random_caption_table

        captions = Conditioning.captions(random_caption_table(
            4, CAPTION_LENGTHS[name], int(transformer.config.caption_channels), tokens=[7, 15, 26, 40], seed=seed,
            std=0.15))
    return LoadedModel(transformer=transformer, scheduler_config=dict(DEFAULT_SCHEDULER),
                       source=f"random:{name}", sha256=hashlib.sha256(key.encode()).hexdigest(), captions=captions)


def num_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
