"""PTQ4DiT (Wu et al., NeurIPS 2024): Channel-wise Salience Balancing + Spearman-guided Salience Calibration.

- salience s(X_j) = max |X_j|, s(W_j) = max |W_j| (over the output rows of every Linear reading X);
- balanced salience s~_j = sqrt(s(X_j) s(W_j)); X is scaled by s~/s(X) and W by s~/s(W), i.e. the smoothing
  scale ``s = sqrt(s(X) / s(W))`` folded exactly as in DESIGN §3.5 (SmoothQuant with alpha = 0.5);
- over timesteps: s(X) = sum_t eta_t s(X^(t)) with eta = softmax_t(-rho_t), rho_t the Spearman rank correlation
  of s(X^(t)) with s(W) across channels, so timesteps whose activation outliers coincide with weight outliers
  (the complementarity the balancing relies on fails) weigh less.
Balances qkv, out-projection and fc1 only (fc2 keeps s = 1); one scale set for all timesteps (G = 1), no shift.
Quantizers: the paper reconstructs with BRECQ/AdaRound (not done here); as a cheap stand-in both weight and
activation clips are MSE-searched (DESIGN §3.6). Calibration: the paper's 25 uniform timesteps x 32 samples.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from scipy.stats import rankdata

from ditq.calibration.methods.base import Context, MethodConfig, Solution, act_scales_for, register_method
from ditq.calibration.methods.smoothquant import one_group

BALANCED_FOLDS = ("adaln", "v_proj")  # qkv + fc1 (adaLN producer) and out-proj (to_v producer); not fc2


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation (average ranks for ties); 0 when either side is constant."""
    ra, rb = rankdata(a), rankdata(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = float(np.sqrt((ra * ra).sum() * (rb * rb).sum()))
    return 0.0 if den == 0 else float((ra * rb).sum() / den)


def spearman_weights(act_salience: torch.Tensor, w_salience: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(eta [T], rho [T]): eta = softmax(-rho), rho_t = Spearman(s(X^(t)), s(W)) for rows t of ``act_salience``."""
    w = w_salience.double().numpy()
    rho = torch.tensor([spearman(row, w) for row in act_salience.double().numpy()], dtype=torch.float64)
    return torch.softmax(-rho, 0), rho


def calibrated_salience(act_salience: torch.Tensor, w_salience: torch.Tensor) -> torch.Tensor:
    """Spearman-guided activation salience sum_t eta_t s(X^(t)) [C]."""
    eta, _ = spearman_weights(act_salience, w_salience)
    return (eta[:, None] * act_salience.double()).sum(0).float()


@register_method("ptq4dit")
@dataclass(frozen=True)
class PTQ4DiTConfig(MethodConfig):
    calibration_defaults: ClassVar[dict[str, int]] = {"steps": 25, "samples": 32}

    act_clip_search: bool = True
    weight_clip_search: bool = True

    def solve(self, ctx: Context) -> Solution:
        grouping = one_group(ctx)
        shifts, smooth, scales = {}, {}, {}
        alphas: dict[str, float | None] = {}
        rho_mean: dict[str, float] = {}
        for site in ctx.sites:
            st = ctx.stats[site.name]
            act_sal = torch.maximum(st.ch_max.abs(), st.ch_min.abs())  # [T, C]: s(X^(t))
            w_sal = torch.cat(ctx.weights[site.name]).abs().amax(0)  # [C]: s(W)
            shifts[site.name] = torch.zeros(1, act_sal.shape[1])
            if site.fold in BALANCED_FOLDS:
                eta, rho = spearman_weights(act_sal, w_sal)
                x_sal = (eta[:, None] * act_sal.double()).sum(0).float()
                s = torch.sqrt(x_sal.clamp_min(1e-5) / w_sal.clamp_min(1e-5)).clamp(1e-4, 1e4)
                smooth[site.name], alphas[site.name] = s, 0.5
                rho_mean[site.name] = round(float(rho.mean()), 4)
            else:
                smooth[site.name], alphas[site.name] = torch.ones_like(w_sal), None
            scales[site.name], _ = act_scales_for(ctx, site, grouping, shifts[site.name], smooth[site.name],
                                                  search=self.act_clip_search)
        return Solution(grouping, shifts, smooth, scales, alphas, weight_clip_search=self.weight_clip_search,
                        info={"spearman_rho_mean": rho_mean})
