"""Q-DiT (Chen et al., CVPR 2025): group-wise weights and dynamic per-token-group activations, group size per
layer found by evolutionary search.

- Each quantized Linear l gets one group size g_l along its input channels, used for both its weight (a scale per
  output channel and block of g_l inputs) and its input (a scale per token and group of g_l channels, computed at
  run time). Candidates: {32, 64, 128, 192, 288} restricted to divisors of the Linear's K (none: per channel /
  per token, g = K). A group as large as K is plain per-channel weights and per-token activations.
- Constraint: mean over Linears of g_l >= ``min_mean_group`` (the paper's 128), lowered to the largest feasible
  mean when the model's K values cannot reach it (tiny models).
- Search: a genetic algorithm as in the paper (population 50, 10 epochs): top-k parents, uniform crossover,
  per-gene mutation, repair into the constraint; at most ``max_evals`` distinct candidates are evaluated.
- Fitness (the paper scores generated images with FID; too slow for a calibration step): the mean output SQNR (dB)
  of the quantized model vs FP on recorded calibration inputs at ``fitness_timesteps`` timesteps spread over the
  trajectory, ``fitness_batch`` rows each.
No shift, no smoothing, one group. Not TensorRT-INT8-deployable (dynamic activations); runs on the torch and
ONNX Runtime backends.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
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
from ditq.calibration.methods.smoothquant import one_group
from ditq.core.quantizers import block_for, weight_scales
from ditq.errors import DitqError

QDIT_GROUP_SIZES = (32, 64, 128, 192, 288)


def feasible_groups(k: int, sizes: tuple[int, ...] = QDIT_GROUP_SIZES) -> tuple[int, ...]:
    """Candidate group sizes for input size ``k``, ascending; (k,) when none divides it."""
    return tuple(sorted(g for g in sizes if g <= k and k % g == 0)) or (k,)


def qdit_spec(group: int, k: int, w_bits: int, a_bits: int) -> LinearSpec:
    """The recipe spec of group size ``group`` on input size ``k`` (``group == k``: per channel / per token)."""
    block = block_for(group, k)
    return LinearSpec(w_bits=w_bits, w_block=block, act="dynamic_group" if block else "dynamic_token",
                      a_bits=a_bits, a_group=block)


@dataclass
class SearchResult:
    genome: tuple[int, ...]  # chosen index into each Linear's candidates
    fitness: float
    evals: int
    history: list[float]  # best fitness after the initial population and after each epoch
    threshold: float


def evolve(candidates: list[tuple[int, ...]], fitness, *, population: int, epochs: int, max_evals: int,
           threshold: float, parents: int, mutate_prob: float, seed: int) -> SearchResult:
    """Maximise ``fitness(sizes)`` over genomes whose mean size is >= ``threshold``; ``max_evals`` distinct calls."""
    rng = np.random.default_rng(seed)
    n = len(candidates)
    cache: dict[tuple[int, ...], float] = {}

    def sizes(genome: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(candidates[i][j] for i, j in enumerate(genome))

    def repair(genome: list[int]) -> tuple[int, ...]:
        while np.mean(sizes(tuple(genome))) < threshold:
            growable = [i for i in range(n) if genome[i] + 1 < len(candidates[i])]
            i = int(rng.choice(growable))
            genome[i] += 1
        return tuple(genome)

    def evaluate(genomes: list[tuple[int, ...]]) -> None:
        for g in genomes:
            if g not in cache and len(cache) < max_evals:
                cache[g] = float(fitness(sizes(g)))

    def fresh(make, count: int) -> list[tuple[int, ...]]:
        out: list[tuple[int, ...]] = []
        for _ in range(20 * count):
            if len(out) == count:
                break
            g = make()
            if g not in cache and g not in out:
                out.append(g)
        return out

    evaluate(fresh(lambda: repair([int(rng.integers(len(c))) for c in candidates]), population))
    history = [max(cache.values())]
    for _ in range(epochs):
        if len(cache) >= max_evals:
            break
        ranked = sorted(cache, key=cache.__getitem__, reverse=True)[:parents]

        def child(ranked: list[tuple[int, ...]] = ranked) -> tuple[int, ...]:
            a, b = (ranked[int(i)] for i in rng.integers(len(ranked), size=2))
            genome = [a[i] if rng.random() < 0.5 else b[i] for i in range(n)]
            for i in range(n):
                if rng.random() < mutate_prob:
                    genome[i] = int(rng.integers(len(candidates[i])))
            return repair(genome)

        evaluate(fresh(child, population))
        history.append(max(cache.values()))
    best = max(cache, key=cache.__getitem__)
    return SearchResult(best, cache[best], len(cache), history, threshold)


@register_method("qdit")
@dataclass(frozen=True)
class QDiTConfig(MethodConfig):
    needs_model: ClassVar[bool] = True
    supports_fp8: ClassVar[bool] = False  # dynamic activations

    group_sizes: tuple[int, ...] = QDIT_GROUP_SIZES
    min_mean_group: int = 128
    population: int = 50
    epochs: int = 10
    max_evals: int = 500  # distinct candidates evaluated at most (the paper: population x epochs)
    parents: int = 10  # top-k kept as parents each epoch
    mutate_prob: float = 0.1
    fitness_timesteps: int = 4
    fitness_batch: int = 8
    seed: int = 0
    weight_clip_search: bool = True

    def __post_init__(self) -> None:
        if not self.group_sizes or any(g < 1 for g in self.group_sizes):
            raise DitqError(f"qdit group_sizes must be positive, got {self.group_sizes}")
        if min(self.population, self.max_evals, self.parents) < 1 or self.epochs < 0:
            raise DitqError("qdit population, parents and max_evals must be >= 1 and epochs >= 0, got "
                            f"{self.population}, {self.parents}, {self.max_evals}, {self.epochs}")
        if not 0.0 <= self.mutate_prob <= 1.0:
            raise DitqError(f"qdit mutate_prob must lie in [0, 1], got {self.mutate_prob}")

    def solve(self, ctx: Context) -> Solution:
        from ditq.core.qlinear import QLinear

        grouping = one_group(ctx)
        evaluator = ProbeEvaluator(ctx, n_timesteps=self.fitness_timesteps, batch=self.fitness_batch)
        linears = [(lin, w) for s in ctx.sites for lin, w in zip(s.linears, ctx.weights[s.name])]
        candidates = [feasible_groups(w.shape[1], tuple(self.group_sizes)) for _, w in linears]
        threshold = min(float(self.min_mean_group), float(np.mean([c[-1] for c in candidates])))
        modules: dict[tuple[str, int], QLinear] = {}  # quantized Linear per (name, group size), built once
        site_of = {lin: s for s in ctx.sites for lin in s.linears}
        moments: dict[str, torch.Tensor | None] = {}

        def module(lin: str, w: torch.Tensor, g: int) -> QLinear:
            if (lin, g) not in modules:
                spec = qdit_spec(g, w.shape[1], ctx.w_bits, ctx.a_bits)
                site = site_of[lin]
                if site.name not in moments:  # the clip criterion calibrate() uses for the final scales
                    moments[site.name] = input_moments(folded_inputs(
                        ctx, site, grouping, torch.zeros(1, w.shape[1]), torch.ones(w.shape[1]))) \
                        if self.weight_clip_search and ctx.weight_clip == "output" else None
                modules[lin, g] = QLinear(
                    evaluator.modules[lin],  # type: ignore[arg-type]
                    w_scale=weight_scales(w, spec.w_bits, search=self.weight_clip_search, block=spec.w_block,
                                          input_power=moments[site.name]),
                    w_bits=spec.w_bits, a_bits=spec.a_bits, dynamic_group=spec.a_group)
            return modules[lin, g]

        def fitness(sizes: tuple[int, ...]) -> float:
            return evaluator.sqnr_db({lin: module(lin, w, g) for (lin, w), g in zip(linears, sizes)})

        result = evolve(candidates, fitness, population=self.population, epochs=self.epochs,
                        max_evals=self.max_evals, threshold=threshold, parents=self.parents,
                        mutate_prob=self.mutate_prob, seed=self.seed)
        chosen = {lin: candidates[i][j] for i, ((lin, _), j) in enumerate(zip(linears, result.genome))}
        specs = {lin: qdit_spec(chosen[lin], w.shape[1], ctx.w_bits, ctx.a_bits) for lin, w in linears}
        channels = {s.name: ctx.stats[s.name].ch_max.shape[1] for s in ctx.sites}
        return Solution(
            grouping, shifts={s: torch.zeros(1, c) for s, c in channels.items()},
            smooth={s: torch.ones(c) for s, c in channels.items()}, act_scales={},
            alphas={s: None for s in channels}, weight_clip_search=self.weight_clip_search, linear_specs=specs,
            info={"group_sizes": chosen, "mean_group_size": float(np.mean(list(chosen.values()))),
                  "constraint_mean_group_at_least": threshold, "fitness": "mean output SQNR (dB) vs FP",
                  "fitness_timesteps": evaluator.timesteps, "best_fitness_db": round(result.fitness, 3),
                  "evaluations": result.evals, "best_per_epoch_db": [round(h, 3) for h in result.history]},
        )
