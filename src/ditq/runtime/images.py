"""Image grids for sampled batches (PNG through Pillow)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[B, C, H, W] in [-1, 1] -> [B, H, W, C] uint8."""
    arr = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return arr.permute(0, 2, 3, 1).numpy()


def save_grid(rows: Sequence[torch.Tensor], path: Path, *, cols: int = 10, upscale: int = 4, pad: int = 2) -> None:
    """Save batches as a grid: each batch fills whole rows of ``cols`` images, batches stacked vertically."""
    from PIL import Image

    tiles = [t for batch in rows for t in to_uint8(batch)]
    per_row = [to_uint8(b) for b in rows]
    n_rows = sum(-(-len(b) // cols) for b in per_row)
    h, w, c = tiles[0].shape
    canvas = np.full((n_rows * (h + pad) + pad, cols * (w + pad) + pad, c), 255, np.uint8)
    r = 0
    for batch in per_row:
        for i, img in enumerate(batch):
            y, x = (r + i // cols) * (h + pad) + pad, (i % cols) * (w + pad) + pad
            canvas[y:y + h, x:x + w] = img
        r += -(-len(batch) // cols)
    img = Image.fromarray(canvas[..., 0] if c == 1 else canvas)
    img = img.resize((img.width * upscale, img.height * upscale), Image.NEAREST)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
