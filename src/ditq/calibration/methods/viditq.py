"""ViDiT-Q (Zhao et al., ICLR 2025): dynamic per-token activations, static-dynamic channel balancing, and
metric-decoupled mixed precision.

- Quantizers: weights static per output channel (or blocks with ``--w-block``), activations dynamic per token.
- Static-dynamic channel balancing: a static SmoothQuant scale s = a^alpha / w^(1-alpha) (a: max |X| over all
  calibration timesteps, folded like HTG's smoothing; fc2 through an explicit Mul), then an online Hadamard
  rotation x' = (x / s) H with W' = W diag(s) H folded into the weight. H is the normalised Sylvester Hadamard of
  the largest power of two dividing K (block-diagonal when K is not a power of two), or of ``rotation_block``.
  ``rotation_signs`` (default on): random channel signs d first, x' = ((x / s) * d) H (QuaRot's randomized
  Hadamard, as HTG's), folded into the smoothing vector like HTG's, so the online rotation stays the plain Sylvester
  one. A "Hadamard rotation" in the paper's sense either way; the signs measured +1.4..2.5 dB PSNR (see the field).
- Metric-decoupled mixed precision: sensitivity of each layer group (a site: qkv, out-proj, fc1 or fc2 of a
  block) is measured separately per timestep segment (``segments`` metrics: the output noise of the model on
  calibration inputs of that segment when only that site is quantized), each metric normalised over sites; a
  site's score is its worst normalised sensitivity. With a 4-bit weight target, the highest-scoring sites keep
  8-bit weights while the parameter-weighted mean weight width stays <= w_bits + ``mp_extra_bits``. With 8-bit
  activations (W8A8, W4A8: activations are already at the widest width) activation bits do not vary, and at W8A8
  nothing varies: mixed precision is a no-op there.
Export: the per-token activation quantizer becomes TensorRT's explicit form (``export.qdq``: a constant-scale
Q/DQ on ``x / s_token``, the GEMM's rows multiplied by ``s_token``), so the graphs pass the TensorRT lint; the
scales are still computed at run time (a ReduceMax per GEMM input), and no TensorRT engine of them has been built
here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ditq.artifacts.recipe import LinearSpec
from ditq.calibration.methods.base import (
    Context,
    MethodConfig,
    ProbeEvaluator,
    Solution,
    folded_inputs,
    input_moments,
    register_method,
)
from ditq.calibration.methods.smoothquant import one_group, site_smoothing
from ditq.core.quantizers import largest_pow2_divisor, rotate_weight, rotation_signs, weight_scales
from ditq.errors import DitqError


def rotation_block(k: int, requested: int = 0) -> int:
    """Hadamard block for input size ``k``: the largest power of two dividing ``k``, capped by ``requested``."""
    block = largest_pow2_divisor(k)
    return min(block, requested) if requested else block


@register_method("viditq")
@dataclass(frozen=True)
class ViDiTQConfig(MethodConfig):
    needs_model: ClassVar[bool] = True
    supports_fp8: ClassVar[bool] = False  # dynamic activations

    alpha: float = 0.5
    smooth_fc2: bool = True
    rotation_block: int = 0  # 0: the largest power of two dividing each Linear's K
    # random channel signs d before the Hadamard, x' = ((x / s) * d) H (QuaRot's randomized form, as HTG's), folded
    # into the smoothing vector; False: the plain Sylvester Hadamard. On by measurement (3 seeds, W8A8): PSNR global
    # +1.4 / +1.5 dB (demo DiT, 100 / 25 steps), +2.0 / +2.5 dB (patches DiT, 50 / 25), step SQNR +2.0..2.4 dB: the
    # plain block sums a one-sided input's common offset into coordinate 0, which sets every token's scale
    rotation_signs: bool = True
    rotation_seed: int = 0
    mixed_precision: bool = True
    mp_extra_bits: float = 0.5  # mean weight bits (parameter-weighted) may exceed the target by this much
    segments: int = 2  # timestep segments, one sensitivity metric each
    fitness_timesteps: int = 8
    fitness_batch: int = 8
    weight_clip_search: bool = True

    def __post_init__(self) -> None:
        if not 0.0 < self.alpha < 1.0:
            raise DitqError(f"viditq alpha must lie in (0, 1), got {self.alpha}")
        if self.rotation_block < 0 or self.rotation_block & (self.rotation_block - 1):
            raise DitqError(f"viditq rotation_block must be 0 or a power of two, got {self.rotation_block}")
        if self.mp_extra_bits < 0 or self.segments < 1:
            raise DitqError(f"viditq mp_extra_bits must be >= 0 and segments >= 1, got {self.mp_extra_bits}, "
                            f"{self.segments}")

    def solve(self, ctx: Context) -> Solution:
        grouping = one_group(ctx)
        shifts, smooth = {}, {}
        alphas: dict[str, float | None] = {}
        specs: dict[str, LinearSpec] = {}
        for site in ctx.sites:
            shifts[site.name], smooth[site.name], alphas[site.name] = site_smoothing(
                ctx, site, self.alpha, smooth_explicit=self.smooth_fc2)
            base = ctx.default_spec(site)
            rotation = rotation_block(smooth[site.name].numel(), self.rotation_block)
            if self.rotation_signs:  # folded like the smoothing (with smooth_fc2 off, fc2's explicit Mul carries them)
                smooth[site.name] = smooth[site.name] * rotation_signs(smooth[site.name].numel(), self.rotation_seed)
            for lin in site.linears:
                specs[lin] = LinearSpec(w_bits=base.w_bits, w_block=base.w_block, act="dynamic_token",
                                        a_bits=ctx.a_bits, rotation=rotation)
        info: dict = {"mixed_precision": "off"}
        if self.mixed_precision and ctx.w_bits < 8:
            specs, info = self._mixed_precision(ctx, shifts, smooth, specs)
        elif self.mixed_precision:
            info = {"mixed_precision": "no-op: weights and activations are already 8-bit"}
        return Solution(grouping, shifts, smooth, {}, alphas, weight_clip_search=self.weight_clip_search,
                        linear_specs=specs, info=info)

    def _mixed_precision(self, ctx: Context, shifts: dict[str, torch.Tensor], smooth: dict[str, torch.Tensor],
                         specs: dict[str, LinearSpec]) -> tuple[dict[str, LinearSpec], dict]:
        """Keep 8-bit weights on the sites most sensitive under any timestep segment's metric, within budget."""
        from ditq.core.fold import fold_state
        from ditq.core.qlinear import QLinear

        assert ctx.transformer is not None
        folded, pre = fold_state(ctx.transformer.state_dict(), ctx.sites, {k: v[0] for k, v in shifts.items()},
                                 smooth)
        evaluator = ProbeEvaluator(ctx, n_timesteps=self.fitness_timesteps, batch=self.fitness_batch, state=folded,
                                   pre=pre)
        # probes run in sampler order (t descending); split them into contiguous timestep segments
        n = len(evaluator.inputs)
        bounds = [round(i * n / self.segments) for i in range(self.segments + 1)]
        segments = [range(bounds[i], bounds[i + 1]) for i in range(self.segments) if bounds[i + 1] > bounds[i]]
        sens: dict[str, list[float]] = {}
        grouping = one_group(ctx)
        for site in ctx.sites:
            repl = {}
            inputs = folded_inputs(ctx, site, grouping, shifts[site.name], smooth[site.name]) \
                if self.weight_clip_search and ctx.weight_clip == "output" else None
            for lin in site.linears:
                spec = specs[lin]
                w = rotate_weight(folded[f"{lin}.weight"], spec.rotation)
                power = None if inputs is None else input_moments(inputs, spec.rotation)
                repl[lin] = QLinear(evaluator.modules[lin], rotation=spec.rotation,  # type: ignore[arg-type]
                                    w_scale=weight_scales(w, spec.w_bits, search=self.weight_clip_search,
                                                          block=spec.w_block, input_power=power),
                                    w_bits=spec.w_bits, pre=pre.get(site.name))
            ratios = evaluator.noise_ratios(repl)
            sens[site.name] = [sum(ratios[i] for i in seg) / len(seg) for seg in segments]
        totals = [sum(v[j] for v in sens.values()) or 1.0 for j in range(len(segments))]
        score = {name: max(v[j] / totals[j] for j in range(len(segments))) for name, v in sens.items()}
        params = {s.name: sum(w.numel() for w in ctx.weights[s.name]) for s in ctx.sites}
        budget = self.mp_extra_bits / (8 - ctx.w_bits) * sum(params.values())  # parameters that may be 8-bit
        promoted = []
        for name in sorted(score, key=score.__getitem__, reverse=True):
            if params[name] <= budget:
                budget -= params[name]
                promoted.append(name)
        out = dict(specs)
        for site in ctx.sites:
            if site.name in promoted:
                for lin in site.linears:
                    s = specs[lin]
                    out[lin] = LinearSpec(8, s.w_block, s.act, s.a_bits, s.a_group, s.rotation)
        total = sum(params.values())
        mean_bits = sum(params[s.name] * (8 if s.name in promoted else ctx.w_bits) for s in ctx.sites) / total
        info = {"mixed_precision": f"weights: sites kept at 8 bits by sensitivity, budget +{self.mp_extra_bits} "
                                   "mean bits; activations: all 8-bit",
                "segment_timesteps": [[evaluator.timesteps[i] for i in seg] for seg in segments],
                "sensitivity": {k: [round(x, 6) for x in v] for k, v in sens.items()},
                "w8_sites": promoted, "mean_weight_bits": round(mean_bits, 3)}
        return out, info
