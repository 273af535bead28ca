"""The DiT family (diffusers ``DiTTransformer2DModel``, ``ada_norm_zero`` blocks): its quantized sites and its
denoiser forward. Self-contained (STYLE §7): imports only ``ditq.core``."""

from __future__ import annotations

import torch
from torch import nn

from ditq.core.sites import Denoiser, Site


def dit_sites(transformer: nn.Module) -> list[Site]:
    """Per block: attn1 q/k/v (after adaLN), the out-projection (into to_v), fc1 (after adaLN), fc2 (explicit)."""
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



class DiTDenoiser(Denoiser):
    cond_names = ("class_labels",)

    def forward(self, hidden_states: torch.Tensor, timestep: torch.Tensor, class_labels: torch.Tensor) -> torch.Tensor:
        out = self.m(hidden_states, timestep=timestep, class_labels=class_labels, return_dict=False)[0]
        return self._eps(out, hidden_states.shape[1])
