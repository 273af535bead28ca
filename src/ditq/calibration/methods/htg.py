"""HTG (DESIGN §3): timestep groups, per-group channel shifts, per-site smoothing with a searched alpha."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ditq.calibration.groups import SiteRange, group_timesteps
from ditq.calibration.methods.base import (
    Context,
    MethodConfig,
    Solution,
    act_scales_for,
    pooled_range,
    register_method,
)
from ditq.errors import DitqError


@register_method("htg")
@dataclass(frozen=True)
class HTGConfig(MethodConfig):
    groups: int | str = "auto"  # an int, or "auto" (knee of the optimal-cost curve)
    max_groups: int = 8
    grouping: str = "dp"  # "dp" (exact) or "greedy" (agglomerative merge)
    alphas: tuple[float, ...] = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
    act_clip_search: bool = True
    explicit_shift: bool = True  # shift/scale sites without a linear producer (fc2) with an explicit Sub/Mul
    table_scale: bool = True  # PixArt adaLN-single sites: smooth with an explicit Mul (their shift is free anyway)

    def __post_init__(self) -> None:
        if self.groups != "auto" and not (isinstance(self.groups, int) and self.groups >= 1):
            raise DitqError(f"--groups must be a positive integer or 'auto', got {self.groups!r}")
        if self.grouping not in ("dp", "greedy"):
            raise DitqError(f"grouping must be 'dp' or 'greedy', got {self.grouping!r}")
        if any(not 0.0 < a < 1.0 for a in self.alphas):
            raise DitqError(f"alphas must lie in (0, 1), got {self.alphas}")

    def solve(self, ctx: Context) -> Solution:
        ranges = [SiteRange(ctx.stats[s.name].ch_max.numpy(), ctx.stats[s.name].ch_min.numpy(),
                            max(ctx.stats[s.name].power, 1e-12)) for s in ctx.sites]
        grouping = group_timesteps(
            ctx.timesteps, ranges, self.groups if self.groups == "auto" else int(self.groups),
            num_train_timesteps=ctx.num_train_timesteps, bits=ctx.a_bits,
            max_groups=min(self.max_groups, len(ctx.timesteps)), method=self.grouping,  # type: ignore[arg-type]
        )
        n_groups = len(grouping.segments)
        shifts, smooth, scales, alphas = {}, {}, {}, {}
        for site in ctx.sites:
            st = ctx.stats[site.name]
            bounds = [pooled_range(st, ctx.rows_of(grouping, g)) for g in range(n_groups)]
            z = torch.stack([(hi + lo) / 2 for hi, lo in bounds])
            if not site.free_shift and not self.explicit_shift:
                z = torch.zeros_like(z)
            a = torch.stack([torch.maximum(hi - z[g], z[g] - lo) for g, (hi, lo) in enumerate(bounds)]).amax(0)
            w = torch.cat(ctx.weights[site.name]).abs().amax(0)
            candidates: list[tuple[float | None, torch.Tensor]] = [(None, torch.ones_like(a))]
            if site.free_scale or (self.explicit_shift if site.fold == "explicit" else self.table_scale):
                a_, w_ = a.clamp_min(1e-5), w.clamp_min(1e-5)
                candidates += [(al, (a_.pow(al) / w_.pow(1 - al)).clamp(1e-4, 1e4)) for al in self.alphas]
            # FP8's grid is logarithmic: it is finest near 0, where the mid-range shift may move the bulk of a
            # one-sided input (post-GELU): try it unshifted too, by absolute error (the shift changes x W^T)
            fp8 = ctx.fmt == "fp8_e4m3"
            best = None
            for shift in [z, torch.zeros_like(z)] if fp8 and z.any() else [z]:
                for alpha, s in candidates:
                    sc, err = act_scales_for(ctx, site, grouping, shift, s, search=True, absolute=fp8)
                    if best is None or err < best[0]:
                        best = (err, alpha, s, sc, shift)
            assert best is not None
            _, alphas[site.name], smooth[site.name], scales[site.name], z = best
            if not self.act_clip_search:
                scales[site.name], _ = act_scales_for(ctx, site, grouping, z, smooth[site.name], search=False)
            shifts[site.name] = z
        return Solution(grouping, shifts, smooth, scales, alphas)
