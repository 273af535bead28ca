"""Conditional sampling with classifier-free guidance over any diffusers scheduler.

The sampler knows nothing of groups, backends or model families: it calls ``denoise(x, timestep, cond) -> eps``
with ``cond`` the named conditioning tensors (class labels, or caption embeddings and mask). Grouped
backends pick their group from the timestep value they are called with (``runtime.backends``), so a scheduler or
step count different from calibration still selects the right scales.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from ditq.core.cond import Cond, batch_size, cat_cond
from ditq.errors import DitqError

Denoise = Callable[[torch.Tensor, torch.Tensor, Cond], torch.Tensor]

SCHEDULERS = {
    "ddpm": "DDPMScheduler",
    "ddim": "DDIMScheduler",
    "dpmsolver": "DPMSolverMultistepScheduler",
}


def make_scheduler(config: dict[str, Any], name: str | None = None) -> Any:
    """A diffusers scheduler from the model's scheduler config; ``name`` swaps the class (ddpm, ddim, dpmsolver)."""
    import diffusers

    cls_name = config.get("_class_name", "DDPMScheduler") if name is None else SCHEDULERS.get(name)
    if cls_name is None:
        raise DitqError(f"unknown scheduler {name!r}; choose one of {', '.join(SCHEDULERS)}")
    return getattr(diffusers, cls_name).from_config(config)


def as_denoise(fn: Any) -> Denoise:
    """A ``Denoise`` callable: a ``models.dit.Denoiser`` module is called through its ``predict``."""
    predict = getattr(fn, "predict", None)
    return predict if callable(predict) and hasattr(fn, "cond_names") else fn


@torch.no_grad()
def sample(
    denoise: Denoise,
    scheduler: Any,
    cond: Mapping[str, torch.Tensor],
    *,
    steps: int,
    cfg_scale: float,
    null_cond: Mapping[str, torch.Tensor],
    sample_shape: tuple[int, ...],
    seed: int = 0,
    on_step: Callable[[int, torch.Tensor, torch.Tensor, Cond, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Run the reverse process for the batch of conditions ``cond``; returns the final samples [B, C, H, W].

    ``null_cond`` (batch 1) is the unconditional input of classifier-free guidance. ``on_step(i, x_in, t_in,
    cond_in, eps_in)`` sees every model call (the CFG batch included) before guidance. The same seed gives the
    same initial noise and the same per-step noise whatever the denoiser.
    """
    if steps < 1:
        raise DitqError(f"--steps must be >= 1, got {steps}")
    denoise = as_denoise(denoise)
    n = batch_size(cond)
    gen = torch.Generator().manual_seed(seed)
    scheduler.set_timesteps(steps)
    x = torch.randn((n, *sample_shape), generator=gen) * scheduler.init_noise_sigma
    guided = cfg_scale != 1.0
    null = {k: v.expand(n, *v.shape[1:]) for k, v in null_cond.items()}
    y_in = cat_cond(cond, null) if guided else dict(cond)
    for i, t in enumerate(scheduler.timesteps):
        x_in = torch.cat([x, x]) if guided else x
        x_in = scheduler.scale_model_input(x_in, t)
        t_in = torch.full((x_in.shape[0],), float(t))
        eps = denoise(x_in, t_in, y_in)
        if on_step is not None:
            on_step(i, x_in, t_in, y_in, eps)
        if guided:
            eps_c, eps_u = eps.chunk(2)
            eps = eps_u + cfg_scale * (eps_c - eps_u)
        x = scheduler.step(eps, t, x, generator=gen).prev_sample
    return x
