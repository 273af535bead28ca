"""SmoothQuant baseline (Xiao et al., 2023): one group, no shift, s = a^alpha / w^(1-alpha), folded like HTG.

a_c = max over all calibration timesteps and tokens of |X_c|, w_c = max |W[:, c]| over the Linears reading X.
Smoothed sites: every quantized input, as Model Optimizer's SmoothQuant does (a per-channel pre-quant scale on
each quantized Linear): where a linear producer exists the scale folds into it (qkv and fc1 into the adaLN
modulation, out-proj into to_v), elsewhere it is an explicit per-channel Mul (fc2 after GELU; PixArt's qkv and fc1,
whose modulation comes from the shared adaLN-single; PixArt's cross-attention q and the caption-fed k/v).
``explicit=False`` keeps s = 1 on those (the old behaviour: on PixArt it left all but the out-projections
unsmoothed, 3-4 dB behind Model Optimizer at the same alpha). alpha defaults to 0.8 (Model Optimizer's
diffusion recipes; the paper's 0.5 measures worse on both testbeds, docs/quality_probe.md). Activation scales
are per-tensor max (the paper's static calibration; ``act_clip_search`` switches on HTG's MSE clip search),
weights per-channel max. ``rotation`` (block size, 0 off): HTG's static block-Hadamard rotation before each
quantizer (scales of the rotated input; the rotated amax comes from the reservoir rows, not the channel stats).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from ditq.calibration.groups import Grouping, SiteRange, group_timesteps
from ditq.calibration.methods.base import (
    Context,
    MethodConfig,
    Solution,
    act_scales_for,
    check_rotation,
    register_method,
    site_rotations,
)
from ditq.core.sites import Site
from ditq.errors import DitqError


def smoothing_scale(a: torch.Tensor, w: torch.Tensor, alpha: float) -> torch.Tensor:
    """``a^alpha / w^(1-alpha)``, guarded against dead channels and clamped to [1e-4, 1e4] (as HTG does)."""
    a_, w_ = a.clamp_min(1e-5), w.clamp_min(1e-5)
    return (a_.pow(alpha) / w_.pow(1 - alpha)).clamp(1e-4, 1e4)


def one_group(ctx: Context) -> Grouping:
    """All calibration timesteps in one group (G = 1) tiling the whole timestep axis."""
    ranges = [SiteRange(st.ch_max.numpy(), st.ch_min.numpy(), max(st.power, 1e-12)) for st in ctx.stats.values()]
    return group_timesteps(ctx.timesteps, ranges, 1, num_train_timesteps=ctx.num_train_timesteps,
                           bits=ctx.a_bits, max_groups=1)


@register_method("smoothquant")
@dataclass(frozen=True)
class SmoothQuantConfig(MethodConfig):
    alpha: float = 0.8
    explicit: bool = True  # also smooth sites without a linear producer, with an explicit per-channel Mul
    act_clip_search: bool = False
    weight_clip_search: bool = False
    rotation: int = 0  # online block-Hadamard size before each (static) quantizer, as HTG's option (0: none)

    def __post_init__(self) -> None:
        if not 0.0 < self.alpha < 1.0:
            raise DitqError(f"smoothquant alpha must lie in (0, 1), got {self.alpha}")
        check_rotation("smoothquant", self.rotation)

    def solve(self, ctx: Context) -> Solution:
        grouping = one_group(ctx)
        blocks = site_rotations(ctx, self.rotation)
        shifts, smooth, scales = {}, {}, {}
        alphas: dict[str, float | None] = {}
        specs = {}
        for site in ctx.sites:
            shifts[site.name], smooth[site.name], alphas[site.name] = site_smoothing(
                ctx, site, self.alpha, smooth_explicit=self.explicit)
            scales[site.name], _ = act_scales_for(ctx, site, grouping, shifts[site.name], smooth[site.name],
                                                  search=self.act_clip_search, rotation=blocks[site.name])
            if blocks[site.name]:
                specs.update({lin: replace(ctx.default_spec(site), rotation=blocks[site.name])
                              for lin in site.linears})
        return Solution(grouping, shifts, smooth, scales, alphas, weight_clip_search=self.weight_clip_search,
                        linear_specs=specs)


def site_smoothing(ctx: Context, site: Site, alpha: float, *, smooth_explicit: bool
                   ) -> tuple[torch.Tensor, torch.Tensor, float | None]:
    """SmoothQuant on one site, no shift: (zero shift [1, C], s = a^alpha / w^(1-alpha), alpha or None).

    Sites without a linear producer keep s = 1 unless ``smooth_explicit`` (they would need an explicit Mul).
    """
    st = ctx.stats[site.name]
    a = torch.maximum(st.ch_max.abs(), st.ch_min.abs()).amax(0)
    w = torch.cat(ctx.weights[site.name]).abs().amax(0)
    if not site.free_scale and not smooth_explicit:
        return torch.zeros(1, a.numel()), torch.ones_like(a), None
    return torch.zeros(1, a.numel()), smoothing_scale(a, w, alpha), alpha
