"""SmoothQuant baseline (Xiao et al., 2023): one group, no shift, s = a^alpha / w^(1-alpha), folded like HTG.

a_c = max over all calibration timesteps and tokens of |X_c|, w_c = max |W[:, c]| over the Linears reading X.
Smoothed sites: every quantized input, as Model Optimizer's SmoothQuant does (a per-channel pre-quant scale on
each quantized Linear): where a linear producer exists the scale folds into it (qkv and fc1 into the adaLN
modulation, out-proj into to_v), elsewhere it is an explicit per-channel Mul (fc2 after GELU; PixArt's qkv and fc1,
whose modulation comes from the shared adaLN-single; PixArt's cross-attention q and the caption-fed k/v).
``explicit=False`` keeps s = 1 on those (the old behaviour: on PixArt it left all but the out-projections
unsmoothed, 3-4 dB behind Model Optimizer at the same alpha). ``alpha="search"`` (the default) picks one alpha
for the model from ``alphas`` by the model-output SQNR on the calibration probes with every site quantized (HTG's
``alpha_criterion="global"``, ``site_probe.SiteScorer``; len(alphas) model evaluations). Demo DiT, two
calibration seeds (docs/quality_probe_baselines.md): vs a fixed 0.8 (Model Optimizer's diffusion alpha; the
paper's 0.5 measures worse) it ties at W8A8 (-0.2 / +0.3 dB global / mean PSNR) and wins +3.0 / +3.5 dB at W4A8.
Activation scales are per-tensor max (the paper's static calibration; ``act_clip_search`` switches on HTG's MSE
clip search), weights per-channel max. ``rotation`` (block size, 0 off): HTG's
static block-Hadamard rotation before each quantizer (scales of the rotated input; the rotated amax comes from
the reservoir rows, not the channel stats).
"""

from __future__ import annotations

import logging
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

log = logging.getLogger(__name__)


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
    alpha: float | str = "search"  # the best of ``alphas`` by model-output SQNR, one alpha for the model; or fixed
    explicit: bool = True  # also smooth sites without a linear producer, with an explicit per-channel Mul
    act_clip_search: bool = False
    weight_clip_search: bool = False
    alphas: tuple[float, ...] = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)  # the grid of alpha="search"
    probe_timesteps: int = 6  # alpha="search": calibration calls scored (spread over the trajectory) ...
    probe_batch: int = 8  # ... and rows of each
    rotation: int = 0  # online block-Hadamard size before each (static) quantizer, as HTG's option (0: none)

    def __post_init__(self) -> None:
        if self.alpha != "search" and (isinstance(self.alpha, str) or not 0.0 < self.alpha < 1.0):
            raise DitqError(f"smoothquant alpha must lie in (0, 1) or be 'search', got {self.alpha!r}")
        if not self.alphas or any(not 0.0 < a < 1.0 for a in self.alphas):
            raise DitqError(f"smoothquant alphas must be non-empty and lie in (0, 1), got {self.alphas}")
        if self.probe_timesteps < 1 or self.probe_batch < 1:
            raise DitqError(f"probe_timesteps and probe_batch must be >= 1, got {self.probe_timesteps}, "
                            f"{self.probe_batch}")
        check_rotation("smoothquant", self.rotation)

    @property
    def needs_model(self) -> bool:  # type: ignore[override]
        """Only the alpha search runs the model (on the recorded calibration probes)."""
        return self.alpha == "search"

    def solve(self, ctx: Context) -> Solution:
        grouping = one_group(ctx)
        blocks = site_rotations(ctx, self.rotation)
        info: dict = {}
        if self.alpha != "search":
            alpha = float(self.alpha)
        elif ctx.transformer is None or not ctx.probes:
            alpha = 0.8
            log.warning("smoothquant: no recorded model calls to score alphas on (a custom forward loop that does "
                        "not pass timestep= by keyword?); using alpha 0.8")
        else:
            from ditq.calibration.methods.site_probe import SiteScorer

            scorer = SiteScorer(ctx, grouping, n_timesteps=self.probe_timesteps, batch=self.probe_batch)
            scores = {al: scorer.score_all({n: c[:3] for n, c in self._solve(ctx, grouping, al, blocks).items()},
                                           blocks)
                      for al in self.alphas}
            alpha = max(scores, key=scores.__getitem__)
            info = {"alpha_search": {"output_sqnr_db": {str(a): round(v, 3) for a, v in scores.items()},
                                     "alpha": alpha}}
        chosen = self._solve(ctx, grouping, alpha, blocks)
        specs = {lin: replace(ctx.default_spec(site), rotation=blocks[site.name])
                 for site in ctx.sites if blocks[site.name] for lin in site.linears}
        return Solution(grouping, {n: c[0] for n, c in chosen.items()}, {n: c[1] for n, c in chosen.items()},
                        {n: c[2] for n, c in chosen.items()}, {n: c[3] for n, c in chosen.items()},
                        weight_clip_search=self.weight_clip_search, linear_specs=specs, info=info)

    def _solve(self, ctx: Context, grouping: Grouping, alpha: float, blocks: dict[str, int]
               ) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor, float | None]]:
        """Per site at ``alpha``: (shift [1, C], smoothing scale [C], activation scales [1], alpha or None)."""
        out = {}
        for site in ctx.sites:
            shift, smooth, site_alpha = site_smoothing(ctx, site, alpha, smooth_explicit=self.explicit)
            scales, _ = act_scales_for(ctx, site, grouping, shift, smooth, search=self.act_clip_search,
                                       rotation=blocks[site.name])
            out[site.name] = (shift, smooth, scales, site_alpha)
        return out


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
