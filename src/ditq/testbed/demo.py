"""The bundled demo model: a tiny class-conditional DiT trained on scikit-learn's digits (16x16, 1 channel).

:func:`train_demo` (wired to ``ditq train-demo -o DIR``) trains it from scratch on CPU in a few minutes and
writes a model directory::

    DIR/transformer/   config.json + diffusion_pytorch_model.safetensors  (EMA weights; DiTTransformer2DModel)
    DIR/scheduler/     scheduler_config.json                              (DDPMScheduler)
    DIR/classifier/    config.json + model.safetensors                    (DigitsClassifier, for metrics)
    DIR/TRAINING.md    how it was trained, wall time, losses, a sample-quality check

The packaged copy lives in :func:`demo_model_dir`.

Conditioning: labels 0..9 are the digit classes, label 10 (:data:`NULL_CLASS`) is the null label used for
classifier-free guidance. diffusers' ``LabelEmbedding`` (created with ``dropout_prob=0.1`` by the DiT) has an
11-row table, but in train mode it drops labels *independently in every block* (and again for the output
modulation). Training therefore switches that internal dropout off and drops labels itself, consistently for
the whole network, with probability :data:`LABEL_DROPOUT`.

Reproducibility: training is deterministic for a given ``seed`` *and* thread count; :func:`train_demo` fixes
``torch.set_num_threads(2)`` (restored afterwards). Other thread counts or CPUs can change the floating-point
reduction order and so the weights in the last bits (and, through training, more than the last bits).
"""

from __future__ import annotations

import copy
import json
import math
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ditq.core.threads import torch_threads
from ditq.testbed.digits import IMAGE_SIZE, NUM_CLASSES, load_digits_images, split_indices

NULL_CLASS = NUM_CLASSES  # label 10: the unconditional / null label for classifier-free guidance
LABEL_DROPOUT = 0.1
TRAIN_THREADS = 2

DEMO_TRANSFORMER_CONFIG: dict[str, Any] = {
    "num_attention_heads": 4,
    "attention_head_dim": 32,
    "in_channels": 1,
    "out_channels": 1,
    "num_layers": 4,
    "sample_size": IMAGE_SIZE,
    "patch_size": 2,
    "num_embeds_ada_norm": NUM_CLASSES,
    "norm_type": "ada_norm_zero",
}

DEMO_SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_schedule": "squaredcos_cap_v2",
    "prediction_type": "epsilon",
    "clip_sample": True,
}

# training hyper-parameters (recorded in TRAINING.md)
DEFAULT_STEPS = 1600
BATCH_SIZE = 64
LEARNING_RATE = 1e-3
WARMUP_STEPS = 100
MIN_LR_FRACTION = 0.1
WEIGHT_DECAY = 0.0
EMA_DECAY = 0.999
GRAD_CLIP = 1.0

# quality check (recorded in TRAINING.md)
CHECK_GUIDANCE = 3.0
CHECK_STEPS = 100
CHECK_PER_CLASS = 10


def demo_model_dir() -> Path:
    """The packaged demo model directory (``ditq/models/demo_weights``)."""
    from ditq.models.loading import DEMO_DIR

    return DEMO_DIR


def load_demo_transformer(model_dir: str | Path | None = None):
    """``DiTTransformer2DModel`` from ``model_dir/transformer`` (default: the packaged demo), in eval mode."""
    from diffusers import DiTTransformer2DModel

    root = Path(model_dir) if model_dir is not None else demo_model_dir()
    return DiTTransformer2DModel.from_pretrained(root / "transformer").eval()


def load_demo_scheduler(model_dir: str | Path | None = None):
    """``DDPMScheduler`` from ``model_dir/scheduler`` (default: the packaged demo)."""
    from diffusers import DDPMScheduler

    root = Path(model_dir) if model_dir is not None else demo_model_dir()
    return DDPMScheduler.from_pretrained(root / "scheduler")


def _label_embedders(model: torch.nn.Module) -> list[torch.nn.Module]:
    from diffusers.models.embeddings import LabelEmbedding

    return [m for m in model.modules() if isinstance(m, LabelEmbedding)]


@torch.no_grad()
def sample_digits(
    transformer: torch.nn.Module,
    scheduler: Any,
    labels: torch.Tensor,
    *,
    guidance_scale: float = CHECK_GUIDANCE,
    num_inference_steps: int = CHECK_STEPS,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Sample ``[B, 1, 16, 16]`` digits in [-1, 1] of classes ``labels`` with classifier-free guidance.

    Each step runs the batch ``[cond; uncond]`` (uncond = label 10) and uses
    ``eps = eps_u + guidance_scale * (eps_c - eps_u)``; ``scheduler`` is stepped in place (use DDPM: DDIM
    with eta=0 at guidance 3 does not give clean digits on this model).
    """
    labels = torch.as_tensor(labels, dtype=torch.long)
    b = labels.shape[0]
    cfg = transformer.config
    x = torch.randn((b, cfg.in_channels, cfg.sample_size, cfg.sample_size), generator=generator)
    x = x * scheduler.init_noise_sigma
    scheduler.set_timesteps(num_inference_steps)
    both = torch.cat([labels, torch.full_like(labels, NULL_CLASS)])
    was_training = transformer.training
    transformer.eval()
    for t in scheduler.timesteps:
        inp = scheduler.scale_model_input(torch.cat([x, x]), t)
        eps = transformer(inp, timestep=t.reshape(1).expand(2 * b), class_labels=both).sample
        eps_c, eps_u = eps.chunk(2)
        eps = eps_u + guidance_scale * (eps_c - eps_u)
        x = scheduler.step(eps, t, x, generator=generator).prev_sample
    transformer.train(was_training)
    return x.clamp(-1.0, 1.0)


def quality_check(
    transformer: torch.nn.Module,
    scheduler: Any,
    classifier: torch.nn.Module,
    *,
    per_class: int = CHECK_PER_CLASS,
    guidance_scale: float = CHECK_GUIDANCE,
    num_inference_steps: int = CHECK_STEPS,
    seed: int = 0,
) -> dict[str, Any]:
    """Sample ``per_class`` digits of each class; return class accuracy and Fréchet distance vs real digits.

    Also gives ``fd_real_floor``: the Fréchet distance of an equal number of real held-out digits
    (the classifier's test split, ``per_class`` of each class) against the same reference set.
    """
    from ditq.testbed.classifier import class_accuracy, classifier_features, frechet_distance, reference_features

    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(NUM_CLASSES).repeat_interleave(per_class)
    t0 = time.perf_counter()
    samples = sample_digits(
        transformer, scheduler, labels, guidance_scale=guidance_scale,
        num_inference_steps=num_inference_steps, generator=gen,
    )
    seconds = time.perf_counter() - t0
    ref = reference_features(classifier)
    images, real_labels = load_digits_images()
    _, test_idx = split_indices(real_labels, seed=0)
    rng = np.random.default_rng(seed)
    floor_idx = np.concatenate(
        [rng.choice(test_idx[real_labels[test_idx].numpy() == c], per_class, replace=False) for c in range(NUM_CLASSES)]
    )
    return {
        "samples": samples,
        "labels": labels,
        "class_accuracy": class_accuracy(samples, labels, classifier),
        "frechet_distance": frechet_distance(classifier_features(samples, classifier), ref),
        "fd_real_floor": frechet_distance(classifier_features(images[floor_idx], classifier), ref),
        "num_samples": int(labels.numel()),
        "guidance_scale": guidance_scale,
        "num_inference_steps": num_inference_steps,
        "sampling_seconds": seconds,
    }


def _lr_at(step: int, steps: int) -> float:
    if step < WARMUP_STEPS:
        return LEARNING_RATE * (step + 1) / WARMUP_STEPS
    progress = (step - WARMUP_STEPS) / max(1, steps - WARMUP_STEPS)
    cos = 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return LEARNING_RATE * (MIN_LR_FRACTION + (1.0 - MIN_LR_FRACTION) * cos)


def fit_dit(model: torch.nn.Module, scheduler: Any, images: torch.Tensor, labels: torch.Tensor, *, steps: int,
            batch_size: int, generator: torch.Generator, progress: bool = True, desc: str = "train DiT"
            ) -> tuple[torch.nn.Module, list[float], float]:
    """Train a class-conditional ``DiTTransformer2DModel`` on ``images`` ``[N, C, H, W]`` in [-1, 1] with
    ``labels`` in ``0..num_embeds_ada_norm-1`` (epsilon objective, label dropout to the null label, EMA).

    Returns ``(ema, losses, seconds)``: the EMA copy in eval mode (label dropout restored, ready to save), the loss
    of every step and the loop's wall time. Every random draw comes from ``generator`` (and, for the initial
    weights, from ``torch``'s global generator before this call).
    """
    from tqdm.auto import tqdm

    null_class = int(model.config.num_embeds_ada_norm)
    embedders = _label_embedders(model)
    assert embedders and all(e.embedding_table.num_embeddings == null_class + 1 for e in embedders)
    saved_dropout = [e.dropout_prob for e in embedders]
    for e in embedders:  # we drop labels ourselves, consistently across blocks
        e.dropout_prob = 0.0
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    alphas_cumprod = scheduler.alphas_cumprod.float()
    num_t = scheduler.config.num_train_timesteps
    opt = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY)
    params = [p for p in model.parameters()]
    ema_params = [p for p in ema.parameters()]
    n = images.shape[0]

    model.train()
    losses: list[float] = []
    perm = torch.randperm(n, generator=generator)
    pos = 0
    t0 = time.perf_counter()
    bar = tqdm(range(steps), desc=desc, disable=not progress, dynamic_ncols=True)
    for step in bar:
        if pos + batch_size > n:
            perm = torch.randperm(n, generator=generator)
            pos = 0
        idx = perm[pos : pos + batch_size]
        pos += batch_size
        x0 = images[idx]
        y = labels[idx].clone()
        drop = torch.rand(batch_size, generator=generator) < LABEL_DROPOUT
        y[drop] = null_class
        t = torch.randint(0, num_t, (batch_size,), generator=generator)
        noise = torch.randn(x0.shape, generator=generator)
        a = alphas_cumprod[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise

        for g in opt.param_groups:
            g["lr"] = _lr_at(step, steps)
        pred = model(xt, timestep=t, class_labels=y).sample
        loss = F.mse_loss(pred, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, GRAD_CLIP)
        opt.step()
        decay = min(EMA_DECAY, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(ema_params, params, 1.0 - decay)
        losses.append(loss.item())
        if step % 20 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}", lr=f"{_lr_at(step, steps):.1e}")
    bar.close()
    seconds = time.perf_counter() - t0
    for e, p in zip(_label_embedders(ema), saved_dropout):
        e.dropout_prob = p
    return ema, losses, seconds


def train_demo(
    out_dir: str | Path,
    *,
    seed: int = 0,
    steps: int = DEFAULT_STEPS,
    progress: bool = True,
    quality: bool = True,
) -> dict[str, Any]:
    """Train the demo DiT (and its digits classifier) and write a model directory to ``out_dir``.

    Deterministic for a given ``seed`` and thread count (fixed here with ``torch.set_num_threads(2)``).
    With ``quality=True`` a 100-sample check (DDPM, 100 steps, guidance 3) is run and recorded in
    ``TRAINING.md``. Returns a dict of timings, losses and metrics (all JSON-serialisable).
    """
    from diffusers import DDPMScheduler, DiTTransformer2DModel

    from ditq.testbed.classifier import save_classifier, train_classifier

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    with torch_threads(TRAIN_THREADS):
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        images, labels = load_digits_images()

        model = DiTTransformer2DModel(**DEMO_TRANSFORMER_CONFIG)
        scheduler = DDPMScheduler(**DEMO_SCHEDULER_CONFIG)
        num_params = sum(p.numel() for p in model.parameters())
        ema, losses, train_seconds = fit_dit(model, scheduler, images, labels, steps=steps, batch_size=BATCH_SIZE,
                                             generator=gen, progress=progress)

        ema.save_pretrained(out / "transformer", safe_serialization=True)
        scheduler.save_pretrained(out / "scheduler")

        t1 = time.perf_counter()
        classifier = train_classifier(seed=seed)
        classifier_seconds = time.perf_counter() - t1
        save_classifier(classifier, out / "classifier")

        result: dict[str, Any] = {
            "seed": seed,
            "steps": steps,
            "batch_size": BATCH_SIZE,
            "threads": TRAIN_THREADS,
            "num_params": num_params,
            "train_seconds": train_seconds,
            "classifier_seconds": classifier_seconds,
            "final_loss": float(np.mean(losses[-100:])),
            "loss_first_100": float(np.mean(losses[:100])),
            "loss_curve": [float(np.mean(losses[i : i + 100])) for i in range(0, len(losses), 100)],
            "classifier_test_accuracy": float(classifier.test_accuracy),
        }
        if quality:
            ema.eval()
            check = quality_check(ema, scheduler, classifier, seed=seed)
            result.update(
                {
                    "sample_class_accuracy": check["class_accuracy"],
                    "sample_frechet_distance": check["frechet_distance"],
                    "real_frechet_floor": check["fd_real_floor"],
                    "sampling_seconds": check["sampling_seconds"],
                }
            )
        result["total_seconds"] = time.perf_counter() - t_start
        (out / "TRAINING.md").write_text(_training_md(result))
        return result


def _training_md(r: dict[str, Any]) -> str:
    import diffusers

    curve = ", ".join(f"{v:.4f}" for v in r["loss_curve"])
    quality = ""
    if "sample_class_accuracy" in r:
        quality = f"""
## Sample-quality check

{CHECK_PER_CLASS * NUM_CLASSES} samples ({CHECK_PER_CLASS} per class, seed {r['seed']}), `DDPMScheduler`,
`set_timesteps({CHECK_STEPS})`, classifier-free guidance scale {CHECK_GUIDANCE} (batch `[cond; uncond]`, uncond =
label {NULL_CLASS}, `eps = eps_u + {CHECK_GUIDANCE} * (eps_c - eps_u)`), scored with the classifier above:

| metric | value |
|---|---|
| class accuracy of samples | {r['sample_class_accuracy'] * 100:.1f}% |
| Fréchet distance, samples vs all 1,797 real digits (classifier features, D=64) | {r['sample_frechet_distance']:.2f} |
| floor: same, {CHECK_PER_CLASS * NUM_CLASSES} real held-out digits vs that reference | {r['real_frechet_floor']:.2f} |
| sampling time (100 steps, batch {2 * CHECK_PER_CLASS * NUM_CLASSES}) | {r['sampling_seconds']:.1f} s |

Fréchet distances from 100 samples are biased upwards; compare against the floor, not against 0.
DDIM with eta=0 at guidance 3 does not give clean digits on this model; use DDPM.
"""
    return f"""# Demo model: class-conditional DiT on scikit-learn digits

Written by `ditq.testbed.demo.train_demo`. Reproduce with

```
ditq train-demo -o DIR
```

(or `python -c "from ditq.testbed.demo import train_demo; train_demo('DIR')"`). Training is deterministic for a
given seed **and thread count**; `train_demo` fixes `torch.set_num_threads({r['threads']})`. Other CPUs or thread
counts may give slightly different weights.

## Data

`sklearn.datasets.load_digits` (1,797 8x8 images shipped with scikit-learn, nothing downloaded), mapped from
0..16 to [-1, 1] and upsampled bilinearly (`align_corners=False`) to 16x16, 1 channel. No augmentation.

## Transformer

`DiTTransformer2DModel(**DEMO_TRANSFORMER_CONFIG)` = `{json.dumps(DEMO_TRANSFORMER_CONFIG)}`
({r['num_params']:,} parameters, 8x8 = 64 tokens of 2x2 patches). Labels 0..9 are digits; label {NULL_CLASS} is the
null label for classifier-free guidance (every block's `LabelEmbedding` table has {NUM_CLASSES + 1} rows).
diffusers' built-in label dropout draws independently in every block, so it was switched off during training
and labels were replaced by {NULL_CLASS} with probability {LABEL_DROPOUT} per sample, consistently for the whole
network.

- objective: epsilon prediction, MSE loss
- noise schedule: `DDPMScheduler({json.dumps(DEMO_SCHEDULER_CONFIG)})`
- optimiser: AdamW, lr {LEARNING_RATE:g} (linear warm-up {WARMUP_STEPS} steps, cosine decay to
  {MIN_LR_FRACTION:g} x lr), weight decay {WEIGHT_DECAY:g}, grad-norm clip {GRAD_CLIP:g}
- batch {r['batch_size']}, {r['steps']} steps, seed {r['seed']}, {r['threads']} CPU threads
- EMA of the weights with decay `min({EMA_DECAY}, (1 + step) / (10 + step))`; the **EMA weights** are shipped
- float32 throughout

## Results

| | |
|---|---|
| DiT training wall time | {r['train_seconds']:.0f} s ({r['train_seconds'] / 60:.1f} min) |
| whole `train_demo` wall time (incl. classifier and quality check) | {r['total_seconds']:.0f} s |
| loss, first 100 steps (mean) | {r['loss_first_100']:.4f} |
| final loss (mean of last 100 steps) | {r['final_loss']:.4f} |
| classifier held-out accuracy (stratified 20% split, `random_state=0`) | {r['classifier_test_accuracy'] * 100:.2f}% |

Loss every 100 steps: {curve}

Measured on: {platform.machine()} {platform.processor() or ''}, {r['threads']} threads, torch {torch.__version__},
diffusers {diffusers.__version__}. The machine was shared with other work, so wall times are upper bounds.

## Classifier

`ditq.testbed.classifier.DigitsClassifier`: 4 conv layers (32/32/64/64 channels, two 2x max-pools), a 64-d ReLU
feature layer (`features()`, used for Fréchet distances) and a linear head. AdamW + one-cycle lr, 30 epochs,
±1-pixel shift and light pixel-noise augmentation, label smoothing 0.05, trained on the 80% split.
{quality}"""
