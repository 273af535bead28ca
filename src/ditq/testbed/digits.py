"""The bundled toy data set: scikit-learn's shipped 8x8 handwritten digits, upsampled to 16x16.

``sklearn.datasets.load_digits`` ships inside scikit-learn (1,797 images, 10 classes), so nothing is
downloaded. Pixels are 0..16 integers; they are mapped to [-1, 1] and upsampled bilinearly
(``align_corners=False``) to ``size`` x ``size``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

NUM_CLASSES = 10
IMAGE_SIZE = 16


def load_digits_images(size: int = IMAGE_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(images, labels)``: float32 ``[N, 1, size, size]`` in [-1, 1] and int64 ``[N]`` (N = 1797)."""
    from sklearn.datasets import load_digits

    data = load_digits()
    images = torch.from_numpy(np.asarray(data.images, dtype=np.float32)).unsqueeze(1)  # [N,1,8,8], 0..16
    images = images / 8.0 - 1.0  # 0..16 -> [-1, 1]
    if size != images.shape[-1]:
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    images = images.clamp_(-1.0, 1.0).contiguous()
    labels = torch.from_numpy(np.asarray(data.target, dtype=np.int64))
    return images, labels


def split_indices(labels: torch.Tensor, test_fraction: float = 0.2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A fixed stratified train/test split of the digits indices (``random_state=seed``)."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(labels))
    train_idx, test_idx = train_test_split(
        idx, test_size=test_fraction, random_state=seed, stratify=labels.numpy()
    )
    return np.sort(train_idx), np.sort(test_idx)
