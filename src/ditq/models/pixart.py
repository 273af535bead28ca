"""PixArt-α/Σ (diffusers ``PixArtTransformer2DModel``: adaLN-single, text cross-attention).

Per block the modulation is ``scale_shift_table[None] + t6`` with ``t6 = adaln_single(t)`` shared by all blocks, so
(DESIGN §3.5) a channel shift folds into the block's own ``scale_shift_table`` (fold "table") while a channel scale
would have to divide the shared ``t6`` too: it needs an explicit Mul. Quantized sites per block:

- ``attn1.qkv`` (to_q/k/v after norm1 + modulation): "table", chunks shift 0 / scale 1;
- ``attn1.to_out.0``: "v_proj" into ``attn1.to_v``;
- ``attn2.to_q``: reads the residual stream itself (PixArt applies no norm before cross-attention): "explicit";
- ``attn2.kv`` (to_k/to_v): read the projected caption, identical for every timestep and produced by the shared
  ``caption_projection``: "explicit";
- ``attn2.to_out.0``: "v_proj" into ``attn2.to_v``;
- ``ff.net.0.proj`` (fc1): "table", chunks shift 3 / scale 4;  ``ff.net.2`` (fc2, after GELU): "explicit".

Kept in high precision, as for DiT: ``adaln_single``, ``caption_projection``, ``pos_embed``, ``proj_out``.
"""

from __future__ import annotations

import torch
from torch import nn

from ditq.core.sites import Denoiser, Site

VAE_SCALE = 8  # PixArt's VAE: 8x spatial down-sampling (the resolution the 1024 px model is conditioned on)


def pixart_sites(transformer: nn.Module) -> list[Site]:
    sites: list[Site] = []
    for i, block in enumerate(transformer.transformer_blocks):  # type: ignore[union-attr]
        b = f"transformer_blocks.{i}"
        table = f"{b}.scale_shift_table"
        sites += [
            Site(f"{b}.attn1.qkv", (f"{b}.attn1.to_q", f"{b}.attn1.to_k", f"{b}.attn1.to_v"), "table", table,
                 shift_chunk=0, scale_chunk=1, num_chunks=6),
            Site(f"{b}.attn1.to_out.0", (f"{b}.attn1.to_out.0",), "v_proj", f"{b}.attn1.to_v"),
        ]
        if getattr(block, "attn2", None) is not None:
            sites += [
                Site(f"{b}.attn2.to_q", (f"{b}.attn2.to_q",), "explicit"),
                Site(f"{b}.attn2.kv", (f"{b}.attn2.to_k", f"{b}.attn2.to_v"), "explicit"),
                Site(f"{b}.attn2.to_out.0", (f"{b}.attn2.to_out.0",), "v_proj", f"{b}.attn2.to_v"),
            ]
        sites += [
            Site(f"{b}.ff.net.0.proj", (f"{b}.ff.net.0.proj",), "table", table, shift_chunk=3, scale_chunk=4,
                 num_chunks=6),
            Site(f"{b}.ff.net.2", (f"{b}.ff.net.2",), "explicit"),
        ]
    return sites


class PixArtDenoiser(Denoiser):
    """``(hidden_states, timestep, encoder_hidden_states, encoder_attention_mask) -> eps``.

    The mask is a float 0/1 tensor [B, L] (the T5 tokenizer's attention mask). PixArt-α 1024 px conditions on the
    image resolution and aspect ratio (``use_additional_conditions``): the graph serves the native square size,
    so they are constants here, ``sample_size * 8`` and 1.0, as diffusers' pipeline passes them at that size.
    """

    cond_names = ("encoder_hidden_states", "encoder_attention_mask")

    def __init__(self, transformer: nn.Module) -> None:
        super().__init__(transformer)
        cfg = transformer.config  # type: ignore[union-attr]
        self.extra = bool(getattr(transformer, "use_additional_conditions", False))
        self.resolution = float(cfg.sample_size * VAE_SCALE)

    def added_cond_kwargs(self, x: torch.Tensor) -> dict[str, torch.Tensor | None]:
        if not self.extra:
            return {"resolution": None, "aspect_ratio": None}
        batch = x.shape[0]
        return {"resolution": torch.full((batch, 2), self.resolution, dtype=x.dtype, device=x.device),
                "aspect_ratio": torch.ones((batch, 1), dtype=x.dtype, device=x.device)}

    def forward(self, hidden_states: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
                encoder_attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.m(hidden_states, encoder_hidden_states=encoder_hidden_states,
                     encoder_attention_mask=encoder_attention_mask, timestep=timestep,
                     added_cond_kwargs=self.added_cond_kwargs(hidden_states), return_dict=False)[0]
        return self._eps(out, hidden_states.shape[1])
