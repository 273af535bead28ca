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


def tiny_dit(seed: int = 0, **overrides: object) -> torch.nn.Module:
    """A depth-2, hidden-32 DiT on 8x8 single-channel inputs with non-trivial adaLN weights.

    DiT zero-initialises its adaLN modulation and output projection, which would make every block an identity;
    they are re-drawn here so quantization has something to do.
    """
    from diffusers import DiTTransformer2DModel

    torch.manual_seed(seed)
    model = DiTTransformer2DModel(**{**TINY_CONFIG, **overrides})
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.abs().sum() == 0:
                p.normal_(0.0, 0.05)
            elif "to_" in name or "ff.net" in name:
                p.add_(torch.randn_like(p) * 0.01)
    return model.eval()


def save_tiny_model_dir(out: Path, seed: int = 0, **overrides: object) -> Path:
    """Write a model directory (transformer/ + scheduler/) that ``ditq`` commands accept."""
    from diffusers import DDPMScheduler

    tiny_dit(seed, **overrides).save_pretrained(Path(out) / "transformer", safe_serialization=True)
    DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2").save_pretrained(Path(out) / "scheduler")
    return Path(out)
