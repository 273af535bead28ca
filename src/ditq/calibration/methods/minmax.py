"""Min-max baseline: one group, no shift, no smoothing, scales from the absolute maxima."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ditq.calibration.groups import SiteRange, group_timesteps
from ditq.calibration.methods.base import Context, MethodConfig, Solution, act_scales_for, register_method


@register_method("minmax")
@dataclass(frozen=True)
class MinMaxConfig(MethodConfig):
    def solve(self, ctx: Context) -> Solution:
        ranges = [SiteRange(st.ch_max.numpy(), st.ch_min.numpy(), max(st.power, 1e-12)) for st in ctx.stats.values()]
        grouping = group_timesteps(ctx.timesteps, ranges, 1, num_train_timesteps=ctx.num_train_timesteps,
                                   bits=ctx.a_bits, max_groups=1)
        shifts, smooth, scales = {}, {}, {}
        for site in ctx.sites:
            channels = ctx.stats[site.name].ch_max.shape[1]
            shifts[site.name] = torch.zeros(1, channels)
            smooth[site.name] = torch.ones(channels)
            scales[site.name], _ = act_scales_for(ctx, site, grouping, shifts[site.name], smooth[site.name],
                                                  search=False)
        return Solution(grouping, shifts, smooth, scales, {s.name: None for s in ctx.sites},
                        weight_clip_search=False)
