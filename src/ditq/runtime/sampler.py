"""Class-conditional sampling with classifier-free guidance over any diffusers scheduler.

The sampler knows nothing of groups or backends: it calls ``denoise(x, timestep, class_labels) -> eps``. Grouped
backends pick their group from the timestep value they are called with (``runtime.backends``), so a scheduler or
step count different from calibration still selects the right scales.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from ditq.errors import DitqError

Denoise = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

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


@torch.no_grad()
def sample(
    denoise: Denoise,
    scheduler: Any,
    class_labels: Sequence[int] | torch.Tensor,
    *,
    steps: int,
    cfg_scale: float,
    null_class: int,
    sample_shape: tuple[int, int, int],
    seed: int = 0,
    on_step: Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Run the reverse process; returns the final samples [B, C, H, W].

    ``on_step(i, x_in, t_in, y_in, eps_in)`` sees every model call (the CFG batch included) before guidance.
    The same seed gives the same initial noise and the same per-step noise whatever the denoiser.
    """
    if steps < 1:
        raise DitqError(f"--steps must be >= 1, got {steps}")
    labels = torch.as_tensor(class_labels, dtype=torch.int64)
    gen = torch.Generator().manual_seed(seed)
    scheduler.set_timesteps(steps)
    x = torch.randn((len(labels), *sample_shape), generator=gen) * scheduler.init_noise_sigma
    guided = cfg_scale != 1.0
    y_in = torch.cat([labels, torch.full_like(labels, null_class)]) if guided else labels
    for i, t in enumerate(scheduler.timesteps):
        x_in = torch.cat([x, x]) if guided else x
        x_in = scheduler.scale_model_input(x_in, t)
        t_in = torch.full((len(y_in),), float(t))
        eps = denoise(x_in, t_in, y_in)
        if on_step is not None:
            on_step(i, x_in, t_in, y_in, eps)
        if guided:
            eps_c, eps_u = eps.chunk(2)
            eps = eps_u + cfg_scale * (eps_c - eps_u)
        x = scheduler.step(eps, t, x, generator=gen).prev_sample
    return x
