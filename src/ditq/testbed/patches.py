"""The second testbed: a class-conditional DiT on 32x32 colour patches of real photographs.

Data: the two photographs scikit-learn ships (``sklearn.datasets.load_sample_images``: china.jpg and flower.jpg,
427x640 RGB; nothing is downloaded). :func:`build_patch_dataset` cuts ``num_images`` random square crops (side
32..64 pixels: scale jitter; half of them mirrored), resizes each to 32x32 (bilinear, antialiased) and maps it to
[-1, 1]. Classes: k-means (8 clusters, ``KMeans(random_state=seed)``) of the crops' 4x4 average-pooled colours,
renumbered by mean brightness (class 0 darkest), so a class is a kind of patch (sky, foliage, petals, shadow...),
across both photographs. Label 8 is the null label for classifier-free guidance.

``ditq train-demo --dataset patches -o DIR`` (:func:`train_patches`) trains ``PATCHES_TRANSFORMER_CONFIG``
(6 blocks, hidden 192, patch 4: 64 tokens, 4.6M parameters) with the demo model's loop (``demo.fit_dit``) and
writes a diffusers model directory (transformer/, scheduler/, TRAINING.md, samples.png) that every ditq command
takes. It is not shipped in the wheel; docs/testbeds.md records how it was built here.

Quality check without a classifier: a sample's *cluster agreement* is whether its nearest k-means centre (the
same 4x4 colour features) is the class it was asked for; real crops score 100 % by construction.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ditq.core.threads import torch_threads

NUM_CLASSES = 8
IMAGE_SIZE = 32
NUM_IMAGES = 6000
CROP_SIDES = (32, 64)  # inclusive range of the square crop side before resizing to 32
FEATURE_POOL = 4  # k-means features: 4x4 average-pooled RGB (48 values)

PATCHES_TRANSFORMER_CONFIG: dict[str, Any] = {
    "num_attention_heads": 6,
    "attention_head_dim": 32,
    "in_channels": 3,
    "out_channels": 3,
    "num_layers": 6,
    "sample_size": IMAGE_SIZE,
    "patch_size": 4,
    "num_embeds_ada_norm": NUM_CLASSES,
    "norm_type": "ada_norm_zero",
}
DEFAULT_STEPS = 1600
BATCH_SIZE = 32

# quality check (recorded in TRAINING.md)
CHECK_STEPS = 100
CHECK_GUIDANCE = 3.0
CHECK_PER_CLASS = 4


@dataclass(frozen=True)
class PatchData:
    images: torch.Tensor  # float32 [N, 3, 32, 32] in [-1, 1]
    labels: torch.Tensor  # int64 [N] in 0..NUM_CLASSES-1
    centers: torch.Tensor  # float32 [NUM_CLASSES, 48]: the k-means centres of patch_features, in class order
    source: torch.Tensor  # int64 [N]: 0 = china.jpg, 1 = flower.jpg


def patch_features(images: torch.Tensor) -> torch.Tensor:
    """``[N, 3*4*4]``: 4x4 average-pooled colours, the space the classes are k-means clusters of."""
    return F.adaptive_avg_pool2d(images.float(), FEATURE_POOL).flatten(1)


def nearest_class(images: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    """The class (nearest k-means centre) of each image ``[N, 3, 32, 32]``."""
    return torch.cdist(patch_features(images), centers).argmin(dim=1)


def build_patch_dataset(num_images: int = NUM_IMAGES, *, seed: int = 0) -> PatchData:
    """Deterministic for a given ``num_images`` and ``seed`` (crops from ``numpy.random.default_rng(seed)``)."""
    from sklearn.cluster import KMeans
    from sklearn.datasets import load_sample_images

    photos = [torch.from_numpy(np.asarray(im, dtype=np.float32)).permute(2, 0, 1) / 127.5 - 1.0
              for im in load_sample_images().images]  # [3, 427, 640] each, in [-1, 1]
    rng = np.random.default_rng(seed)
    source = rng.integers(0, len(photos), num_images)
    sides = rng.integers(CROP_SIDES[0], CROP_SIDES[1] + 1, num_images)
    flips = rng.random(num_images) < 0.5
    fy, fx = rng.random(num_images), rng.random(num_images)
    crops = []
    for src, side, flip, uy, ux in zip(source, sides, flips, fy, fx):
        photo = photos[src]
        y = int(uy * (photo.shape[1] - side + 1))
        x = int(ux * (photo.shape[2] - side + 1))
        crop = photo[:, y : y + side, x : x + side].unsqueeze(0)
        if side != IMAGE_SIZE:
            crop = F.interpolate(crop, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False,
                                 antialias=True)
        crops.append(crop.flip(-1) if flip else crop)
    images = torch.cat(crops).clamp_(-1.0, 1.0).contiguous()
    feats = patch_features(images)
    km = KMeans(n_clusters=NUM_CLASSES, n_init=4, random_state=seed).fit(feats.double().numpy())
    order = np.argsort(km.cluster_centers_.mean(axis=1), kind="stable")  # class 0 = darkest centre
    centers = torch.from_numpy(km.cluster_centers_[order].astype(np.float32))
    labels = nearest_class(images, centers)
    return PatchData(images, labels, centers, torch.from_numpy(source.astype(np.int64)))


def load_patch_images(num_images: int = NUM_IMAGES, *, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images, labels)``: float32 ``[N, 3, 32, 32]`` in [-1, 1] and int64 ``[N]`` in ``0..7``."""
    data = build_patch_dataset(num_images, seed=seed)
    return data.images, data.labels


def train_patches(out_dir: str | Path, *, seed: int = 0, steps: int = DEFAULT_STEPS, progress: bool = True,
                  num_images: int = NUM_IMAGES, transformer_config: dict[str, Any] | None = None,
                  quality: bool = True, threads: int | None = None) -> dict[str, Any]:
    """Train the patches DiT and write a model directory to ``out_dir``; returns timings, losses and the quality
    check (all JSON-serialisable). Deterministic for a seed and thread count (``threads``, default
    ``demo.TRAIN_THREADS``), like ``demo.train_demo``; on a shared, oversubscribed CPU one thread is much faster.
    ``transformer_config`` overrides entries of ``PATCHES_TRANSFORMER_CONFIG`` (tests use a tiny one)."""
    from diffusers import DDPMScheduler, DiTTransformer2DModel

    from ditq.testbed import demo

    config = {**PATCHES_TRANSFORMER_CONFIG, **(transformer_config or {})}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    threads = threads or demo.TRAIN_THREADS
    start = time.perf_counter()
    with torch_threads(threads):
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        data = build_patch_dataset(num_images, seed=seed)
        model = DiTTransformer2DModel(**config)
        scheduler = DDPMScheduler(**demo.DEMO_SCHEDULER_CONFIG)
        num_params = sum(p.numel() for p in model.parameters())
        ema, losses, train_seconds = demo.fit_dit(model, scheduler, data.images, data.labels, steps=steps,
                                                  batch_size=BATCH_SIZE, generator=gen, progress=progress,
                                                  desc="train patches DiT")
        ema.save_pretrained(out / "transformer", safe_serialization=True)
        scheduler.save_pretrained(out / "scheduler")
        result: dict[str, Any] = {
            "seed": seed, "steps": steps, "batch_size": BATCH_SIZE, "threads": threads,
            "num_images": num_images, "class_counts": torch.bincount(data.labels, minlength=NUM_CLASSES).tolist(),
            "num_params": num_params, "train_seconds": train_seconds,
            "loss_first_100": float(np.mean(losses[:100])), "final_loss": float(np.mean(losses[-100:])),
            "loss_curve": [float(np.mean(losses[i : i + 250])) for i in range(0, len(losses), 250)],
        }
        if quality:
            result.update(_quality(out, data, seed))
        result["total_seconds"] = time.perf_counter() - start
        (out / "TRAINING.md").write_text(_training_md(result, config))
        return result


def _quality(model_dir: Path, data: PatchData, seed: int) -> dict[str, Any]:
    """Sample ``CHECK_PER_CLASS`` patches per class (the bench's sampler: DDPM 100 steps, CFG 3); cluster agreement
    of the samples, and ``samples.png`` (per class row: real crops left, samples right)."""
    from ditq.models.loading import load_model
    from ditq.testbed.scoring import SamplingSpec, run_sampler

    model = load_model(model_dir)
    labels = torch.arange(NUM_CLASSES).repeat_interleave(CHECK_PER_CLASS)
    t0 = time.perf_counter()
    images = run_sampler(model, model.denoiser(), labels,
                         SamplingSpec(steps=CHECK_STEPS, cfg_scale=CHECK_GUIDANCE, seed=seed)).clamp(-1, 1)
    seconds = time.perf_counter() - t0
    hits = (nearest_class(images, data.centers) == labels).float().view(NUM_CLASSES, CHECK_PER_CLASS)
    real = [data.images[data.labels == c][:CHECK_PER_CLASS] for c in range(NUM_CLASSES)]
    if all(len(r) == CHECK_PER_CLASS for r in real):  # tests' tiny data sets may lack some classes
        _write_grid(model_dir / "samples.png", torch.stack(real), images.view(NUM_CLASSES, CHECK_PER_CLASS,
                                                                              *images.shape[1:]))
    return {"sample_cluster_agreement": hits.mean().item(),
            "per_class_agreement": [round(v, 3) for v in hits.mean(1).tolist()],
            "sampling_seconds": seconds, "check_samples": int(labels.numel())}


def _write_grid(path: Path, real: torch.Tensor, fake: torch.Tensor, gap: int = 2) -> None:
    """One row per class: ``real`` [C, K, 3, H, W] crops, a wider gap, then ``fake`` samples; white gaps."""
    from PIL import Image

    rows, k, _, h, w = real.shape
    width = 2 * k * (w + gap) + 3 * gap
    canvas = np.full((rows * (h + gap) + gap, width, 3), 255, np.uint8)
    for r in range(rows):
        for j in range(k):
            for half, batch in ((0, real), (1, fake)):
                x = gap + j * (w + gap) + half * (k * (w + gap) + 2 * gap)
                y = gap + r * (h + gap)
                pix = ((batch[r, j].clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
                canvas[y : y + h, x : x + w] = pix
    Image.fromarray(canvas).save(path)


def _training_md(r: dict[str, Any], config: dict[str, Any]) -> str:
    from ditq.testbed import demo

    curve = ", ".join(f"{v:.4f}" for v in r["loss_curve"])
    quality = ""
    if "sample_cluster_agreement" in r:
        quality = (
            f"\n## Sample check\n\n{r['check_samples']} samples ({CHECK_PER_CLASS} per class, seed {r['seed']}), "
            f"DDPM {CHECK_STEPS} steps, CFG {CHECK_GUIDANCE} (ditq's sampler, as `ditq bench quality` runs it), "
            f"{r['sampling_seconds']:.0f} s.\n"
            f"Cluster agreement (nearest k-means centre = requested class): {r['sample_cluster_agreement'] * 100:.1f} %"
            f" (chance 12.5 %); per class: {r['per_class_agreement']}.\n"
            "`samples.png`: one row per class, real crops left, samples right.\n")
    return f"""# Patches testbed: class-conditional DiT on 32x32 photo patches

Written by `ditq.testbed.patches.train_patches` (`ditq train-demo --dataset patches -o DIR`); not shipped.

- data: {r['num_images']} crops of sklearn's china.jpg / flower.jpg (side {CROP_SIDES[0]}..{CROP_SIDES[1]} px, half
  mirrored, resized to 32x32), {NUM_CLASSES} k-means classes of 4x4 colour features; class sizes {r['class_counts']}
- transformer: `DiTTransformer2DModel({json.dumps(config)})`, {r['num_params']:,} parameters
- scheduler: `DDPMScheduler({json.dumps(demo.DEMO_SCHEDULER_CONFIG)})`; epsilon objective; label {NUM_CLASSES} is the
  null label (dropout {demo.LABEL_DROPOUT})
- AdamW lr {demo.LEARNING_RATE:g} (warm-up {demo.WARMUP_STEPS}, cosine to {demo.MIN_LR_FRACTION:g} x), grad clip
  {demo.GRAD_CLIP:g}, EMA {demo.EMA_DECAY} (the EMA weights are saved); batch {r['batch_size']}, {r['steps']} steps,
  seed {r['seed']}, {r['threads']} threads, float32

| | |
|---|---|
| training wall time | {r['train_seconds']:.0f} s ({r['train_seconds'] / 60:.1f} min) |
| loss, first 100 steps (mean) | {r['loss_first_100']:.4f} |
| final loss (mean of last 100 steps) | {r['final_loss']:.4f} |

Loss every 250 steps: {curve}
{quality}"""
