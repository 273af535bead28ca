"""Seeded tiny DiT models for tests and smoke runs (random weights, nothing downloaded)."""

from __future__ import annotations

from pathlib import Path

import torch

TINY_CONFIG = dict(
    num_attention_heads=2,
    attention_head_dim=16,
    in_channels=1,
    out_channels=1,
    num_layers=2,
    sample_size=8,
    patch_size=2,
    num_embeds_ada_norm=10,
    norm_type="ada_norm_zero",
)


def _redraw(model: torch.nn.Module) -> torch.nn.Module:
    """Re-draw zero-initialised parameters and perturb attention/FFN weights, so quantization has work to do."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.abs().sum() == 0:
                p.normal_(0.0, 0.05)
            elif "to_" in name or "ff.net" in name:
                p.add_(torch.randn_like(p) * 0.01)
    return model.eval()


def tiny_dit(seed: int = 0, **overrides: object) -> torch.nn.Module:
    """A depth-2, hidden-32 DiT on 8x8 single-channel inputs with non-trivial adaLN weights.

    DiT zero-initialises its adaLN modulation and output projection, which would make every block an identity;
    they are re-drawn here so quantization has something to do.
    """
    from diffusers import DiTTransformer2DModel

    torch.manual_seed(seed)
    model = DiTTransformer2DModel(**{**TINY_CONFIG, **overrides})
    return _redraw(model)


def save_tiny_model_dir(out: Path, seed: int = 0, **overrides: object) -> Path:
    """Write a model directory (transformer/ + scheduler/) that ``ditq`` commands accept."""
    from diffusers import DDPMScheduler

    tiny_dit(seed, **overrides).save_pretrained(Path(out) / "transformer", safe_serialization=True)
    DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2").save_pretrained(Path(out) / "scheduler")
    return Path(out)


TINY_PIXART_CONFIG = dict(
    num_attention_heads=2,
    attention_head_dim=16,
    in_channels=4,
    out_channels=8,
    num_layers=2,
    sample_size=8,
    patch_size=2,
    cross_attention_dim=32,
    caption_channels=24,
    norm_num_groups=32,
)
TINY_CAPTIONS = dict(num=6, length=12, dim=24)


def tiny_pixart(seed: int = 0, **overrides: object) -> torch.nn.Module:
    """A depth-2, hidden-32 PixArt (adaLN-single, cross-attention to 24-dim captions) on 8x8x4 latents, with
    zero-initialised parameters re-drawn like ``tiny_dit``."""
    from diffusers import PixArtTransformer2DModel

    torch.manual_seed(seed)
    model = PixArtTransformer2DModel(**{**TINY_PIXART_CONFIG, **overrides})
    return _redraw(model)


def save_tiny_pixart_dir(out: Path, seed: int = 0, **overrides: object) -> Path:
    """A PixArt model directory (transformer/, scheduler/, captions.safetensors with a fixed random caption table)."""
    from diffusers import DPMSolverMultistepScheduler

    from ditq.artifacts.captions import CAPTIONS_FILE, save_caption_table
    from ditq.models.conditioning import random_caption_table

    model = tiny_pixart(seed, **overrides)
    model.save_pretrained(Path(out) / "transformer", safe_serialization=True)
    DPMSolverMultistepScheduler(num_train_timesteps=1000).save_pretrained(Path(out) / "scheduler")
    c = TINY_CAPTIONS
    table = random_caption_table(c["num"], c["length"], int(model.config.caption_channels),
                                 tokens=[3, 5, 8, 12, 4, 6], seed=seed + 1, std=1.0)
    save_caption_table(Path(out) / CAPTIONS_FILE, **table)
    return Path(out)
