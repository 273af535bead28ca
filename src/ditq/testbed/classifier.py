"""A small CNN digits classifier used for the demo model's quality metrics.

It gives two numbers for generated 16x16 digits: *class accuracy* (does a sample conditioned on class ``c``
look like a ``c``?) and a Fréchet distance between its penultimate features of generated and real digits
(an FID analogue, with this classifier in place of Inception).

Weights are stored as ``model.safetensors`` plus a ``config.json`` (no pickle).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ditq.testbed.digits import IMAGE_SIZE, NUM_CLASSES, load_digits_images, split_indices

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


class DigitsClassifier(nn.Module):
    """CNN on ``[B, 1, 16, 16]`` images in [-1, 1].

    ``forward`` gives logits, ``features`` the penultimate ``[B, D]`` (ReLU) activations.
    """

    def __init__(self, channels: int = 32, feature_dim: int = 64, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.channels = channels
        self.feature_dim = feature_dim
        self.num_classes = num_classes
        c = channels
        self.conv1 = nn.Conv2d(1, c, 3, padding=1)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1)
        self.conv3 = nn.Conv2d(c, 2 * c, 3, padding=1)
        self.conv4 = nn.Conv2d(2 * c, 2 * c, 3, padding=1)
        self.fc = nn.Linear(2 * c * 4 * 4, feature_dim)
        self.head = nn.Linear(feature_dim, num_classes)

    def config(self) -> dict:
        return {
            "architecture": "DigitsClassifier",
            "channels": self.channels,
            "feature_dim": self.feature_dim,
            "num_classes": self.num_classes,
            "image_size": IMAGE_SIZE,
        }

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)  # 8x8
        x = F.relu(self.conv3(x))
        x = F.max_pool2d(F.relu(self.conv4(x)), 2)  # 4x4
        return F.relu(self.fc(x.flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _random_shift(x: torch.Tensor, gen: torch.Generator, max_shift: int = 1) -> torch.Tensor:
    """Shift each image by up to ``max_shift`` pixels (pad with background -1, crop)."""
    n, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4, value=-1.0)
    dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=gen)
    dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=gen)
    out = torch.empty_like(x)
    for i in range(n):
        out[i] = padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w]
    return out


def train_classifier(
    seed: int = 0, *, epochs: int = 30, batch_size: int = 64, lr: float = 2e-3, verbose: bool = False
) -> DigitsClassifier:
    """Train the classifier on a fixed stratified 80/20 split (``split_indices(seed=0)``), deterministically.

    Takes a few seconds on 2 CPU cores. The held-out accuracy is stored on the returned model as
    ``model.test_accuracy`` (and saved into ``config.json`` by :func:`save_classifier`).
    """
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    images, labels = load_digits_images()
    train_idx, test_idx = split_indices(labels, seed=0)
    xtr, ytr = images[train_idx], labels[train_idx]
    xte, yte = images[test_idx], labels[test_idx]

    model = DigitsClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps_per_epoch = (len(xtr) + batch_size - 1) // batch_size
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch)
    t0 = time.perf_counter()
    model.train()
    for epoch in range(epochs):
        perm = torch.randperm(len(xtr), generator=gen)
        for i in range(steps_per_epoch):
            b = perm[i * batch_size : (i + 1) * batch_size]
            x = _random_shift(xtr[b], gen)
            # light pixel noise makes the features less brittle on generated samples
            x = (x + 0.05 * torch.randn(x.shape, generator=gen)).clamp(-1, 1)
            loss = F.cross_entropy(model(x), ytr[b], label_smoothing=0.05)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        if verbose:
            print(f"classifier epoch {epoch + 1}/{epochs} loss {loss.item():.4f}")
    model.eval()
    model.test_accuracy = class_accuracy(xte, yte, model)  # type: ignore[attr-defined]
    model.train_seconds = time.perf_counter() - t0  # type: ignore[attr-defined]
    return model


def save_classifier(model: DigitsClassifier, dir: str | Path) -> Path:
    """Write ``model.safetensors`` and ``config.json`` into ``dir`` (created if needed); return ``dir``."""
    from safetensors.torch import save_file

    out = Path(dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(out / WEIGHTS_NAME))
    cfg = model.config()
    acc = getattr(model, "test_accuracy", None)
    if acc is not None:
        cfg["test_accuracy"] = float(acc)
        cfg["test_split"] = "sklearn train_test_split(test_size=0.2, random_state=0, stratify=labels)"
    (out / CONFIG_NAME).write_text(json.dumps(cfg, indent=2) + "\n")
    return out


def default_classifier_dir() -> Path:
    from ditq.models.loading import DEMO_DIR

    return DEMO_DIR / "classifier"


def load_classifier(dir: str | Path | None = None) -> DigitsClassifier:
    """Load a classifier saved by :func:`save_classifier`; ``dir=None`` loads the packaged one. Returns eval mode."""
    from safetensors.torch import load_file

    from ditq.errors import DitqError

    path = Path(dir) if dir is not None else default_classifier_dir()
    if not (path / WEIGHTS_NAME).is_file() or not (path / CONFIG_NAME).is_file():
        raise DitqError(
            f"no digits classifier at {path} (need {WEIGHTS_NAME} and {CONFIG_NAME}); "
            "run `ditq train-demo -o DIR` to create one"
        )
    cfg = json.loads((path / CONFIG_NAME).read_text())
    model = DigitsClassifier(
        channels=int(cfg.get("channels", 32)),
        feature_dim=int(cfg.get("feature_dim", 64)),
        num_classes=int(cfg.get("num_classes", NUM_CLASSES)),
    )
    model.load_state_dict(load_file(str(path / WEIGHTS_NAME)))
    if "test_accuracy" in cfg:
        model.test_accuracy = float(cfg["test_accuracy"])  # type: ignore[attr-defined]
    return model.eval()


@torch.no_grad()
def _batched(fn, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    return torch.cat([fn(images[i : i + batch_size]) for i in range(0, len(images), batch_size)])


@torch.no_grad()
def class_accuracy(images: torch.Tensor, labels: torch.Tensor, classifier: DigitsClassifier) -> float:
    """Fraction of ``images`` ([B,1,16,16] in [-1,1]) that ``classifier`` assigns to ``labels``."""
    was_training = classifier.training
    classifier.eval()
    images = images.detach().float().cpu().clamp(-1, 1)
    pred = _batched(classifier, images).argmax(1)
    classifier.train(was_training)
    return float((pred == torch.as_tensor(labels).cpu().long()).float().mean())


@torch.no_grad()
def classifier_features(images: torch.Tensor, classifier: DigitsClassifier) -> np.ndarray:
    """Penultimate features ``[B, D]`` (float64 numpy) of ``images`` in [-1, 1]."""
    was_training = classifier.training
    classifier.eval()
    feats = _batched(classifier.features, images.detach().float().cpu().clamp(-1, 1))
    classifier.train(was_training)
    return feats.double().numpy()


def reference_features(classifier: DigitsClassifier) -> np.ndarray:
    """Features of all 1,797 real digits images (the reference set for :func:`frechet_distance`)."""
    images, _ = load_digits_images()
    return classifier_features(images, classifier)


def frechet_distance(feats_a: np.ndarray, feats_b: np.ndarray, eps: float = 1e-6) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets ``[N, D]`` (the FID formula).

    ``|mu_a - mu_b|^2 + Tr(S_a + S_b - 2 sqrtm(S_a S_b))``; ``eps`` is added to both covariance diagonals so
    the matrix square root stays well defined for small or rank-deficient sets; the real part is taken.
    """
    from scipy import linalg

    a = np.asarray(feats_a, dtype=np.float64)
    b = np.asarray(feats_b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"feature sets must be [N, D] with the same D, got {a.shape} and {b.shape}")
    mu_a, mu_b = a.mean(0), b.mean(0)
    offset = np.eye(a.shape[1]) * eps
    cov_a = np.atleast_2d(np.cov(a, rowvar=False)) + offset
    cov_b = np.atleast_2d(np.cov(b, rowvar=False)) + offset
    covmean = linalg.sqrtm(cov_a @ cov_b)
    if not np.isfinite(covmean).all():
        bigger = np.eye(a.shape[1]) * max(eps, 1e-6) * 1e3
        covmean = linalg.sqrtm((cov_a + bigger) @ (cov_b + bigger))
    covmean = np.real(covmean)
    diff = mu_a - mu_b
    fd = float(diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2.0 * np.trace(covmean))
    return max(fd, 0.0)
