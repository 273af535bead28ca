"""A tiny PixArt trained on sklearn's digits, "captioned" by a fixed random caption table (one caption per digit).

The text-conditioned twin of the bundled demo DiT, for measuring PixArt quantization on a model that has learned
something: captions are 16-token random embeddings (4..16 valid tokens, T5-style zero padding) standing in for a
text encoder, the null caption is one valid token (as T5 encodes ""), and 10 % of training captions are dropped to
it for classifier-free guidance. Same data, schedule and optimiser recipe as the demo DiT (``models.demo``), so
the digits classifier scores its samples. ``ditq train-demo --arch pixart -o DIR`` writes a model directory
(transformer/, scheduler/, captions.safetensors) that every ditq command accepts.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ditq.core.threads import torch_threads

CAPTION_LENGTH, CAPTION_DIM = 16, 32
PIXART_DIGITS_CONFIG: dict[str, Any] = dict(
    num_attention_heads=4, attention_head_dim=32, in_channels=1, out_channels=1, num_layers=4, sample_size=16,
    patch_size=2, cross_attention_dim=128, caption_channels=CAPTION_DIM, num_embeds_ada_norm=1000,
)


def digit_captions(seed: int = 0) -> dict[str, torch.Tensor]:
    from ditq.models.conditioning import random_caption_table
    from ditq.testbed.demo import NUM_CLASSES

    tokens = [4 + (3 * c) % 13 for c in range(NUM_CLASSES)]
    return random_caption_table(NUM_CLASSES, CAPTION_LENGTH, CAPTION_DIM, tokens=tokens, seed=seed + 100, std=1.0)


def train_pixart_digits(out_dir: str | Path, *, seed: int = 0, steps: int | None = None,
                        progress: bool = True) -> dict[str, Any]:
    """Train and write the model directory; deterministic for a seed and thread count. Returns timings, loss and
    (100 samples, DDPM 100 steps, CFG 3) class accuracy / Fréchet distance with the digits classifier."""
    from diffusers import DDPMScheduler, PixArtTransformer2DModel
    from tqdm.auto import tqdm

    from ditq.artifacts.captions import CAPTIONS_FILE, Conditioning, save_caption_table
    from ditq.testbed import demo
    from ditq.testbed.digits import load_digits_images

    steps = steps or demo.DEFAULT_STEPS
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with torch_threads(demo.TRAIN_THREADS):
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        images, labels = load_digits_images()
        table = digit_captions(seed)
        captions = Conditioning.captions(table)
        model = PixArtTransformer2DModel(**PIXART_DIGITS_CONFIG)
        ema = copy.deepcopy(model).eval().requires_grad_(False)
        scheduler = DDPMScheduler(**demo.DEMO_SCHEDULER_CONFIG)
        alphas = scheduler.alphas_cumprod.float()
        opt = torch.optim.AdamW(model.parameters(), lr=demo.LEARNING_RATE, weight_decay=demo.WEIGHT_DECAY)
        params, ema_params = list(model.parameters()), list(ema.parameters())
        no_extra = {"resolution": None, "aspect_ratio": None}
        model.train()
        losses: list[float] = []
        n, pos, perm = images.shape[0], 0, torch.randperm(images.shape[0], generator=gen)
        bar = tqdm(range(steps), desc="train PixArt", disable=not progress, dynamic_ncols=True)
        for step in bar:
            if pos + demo.BATCH_SIZE > n:
                perm, pos = torch.randperm(n, generator=gen), 0
            idx = perm[pos: pos + demo.BATCH_SIZE]
            pos += demo.BATCH_SIZE
            cond = captions.cond(labels[idx])
            drop = torch.rand(demo.BATCH_SIZE, generator=gen) < demo.LABEL_DROPOUT
            null = captions.null(demo.BATCH_SIZE)
            emb = torch.where(drop[:, None, None], null["encoder_hidden_states"], cond["encoder_hidden_states"])
            mask = torch.where(drop[:, None], null["encoder_attention_mask"], cond["encoder_attention_mask"])
            t = torch.randint(0, scheduler.config.num_train_timesteps, (demo.BATCH_SIZE,), generator=gen)
            noise = torch.randn(images[idx].shape, generator=gen)
            a = alphas[t].view(-1, 1, 1, 1)
            xt = a.sqrt() * images[idx] + (1 - a).sqrt() * noise
            for g in opt.param_groups:
                g["lr"] = demo._lr_at(step, steps)
            pred = model(xt, encoder_hidden_states=emb, encoder_attention_mask=mask, timestep=t,
                         added_cond_kwargs=no_extra).sample
            loss = F.mse_loss(pred, noise)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, demo.GRAD_CLIP)
            opt.step()
            with torch.no_grad():
                torch._foreach_lerp_(ema_params, params, 1.0 - min(demo.EMA_DECAY, (1 + step) / (10 + step)))
            losses.append(loss.item())
            if step % 20 == 0:
                bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
        bar.close()
        train_seconds = time.perf_counter() - start
        ema.save_pretrained(out / "transformer", safe_serialization=True)
        scheduler.save_pretrained(out / "scheduler")
        save_caption_table(out / CAPTIONS_FILE, **table)
        result: dict[str, Any] = {"seed": seed, "steps": steps, "threads": demo.TRAIN_THREADS,
                                  "num_params": sum(p.numel() for p in params), "train_seconds": train_seconds,
                                  "final_loss": float(np.mean(losses[-100:])),
                                  "loss_first_100": float(np.mean(losses[:100]))}
        result.update(_quality(out, seed))
        (out / "TRAINING.md").write_text(
            "# Tiny PixArt on digits (ditq train-demo --arch pixart)\n\n"
            + "\n".join(f"- {k}: {round(v, 4) if isinstance(v, float) else v}" for k, v in result.items()) + "\n")
        return result


def _quality(model_dir: Path, seed: int) -> dict[str, float]:
    """Class accuracy and Fréchet distance of 100 FP samples (DDPM 100 steps, CFG 3) with the digits classifier."""
    from ditq.models.loading import load_model
    from ditq.testbed.scoring import ImageScorer, SamplingSpec, run_sampler

    model = load_model(model_dir)
    labels = torch.arange(10).repeat_interleave(10)
    t0 = time.perf_counter()
    images = run_sampler(model, model.denoiser(), labels, SamplingSpec(steps=100, cfg_scale=3.0, seed=seed))
    scores = ImageScorer().score(images, labels)
    return {"sample_class_accuracy": scores["class_accuracy"], "sample_frechet_distance": scores["frechet_distance"],
            "sampling_seconds": time.perf_counter() - t0}
