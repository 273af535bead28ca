"""``calibrate(model, method, config) -> Recipe``: statistics, the method's decisions, weight scales."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from tqdm.auto import tqdm

from ditq.calibration.methods import MethodConfig
from ditq.calibration.methods.base import Context
from ditq.calibration.quantizers import weight_scales
from ditq.calibration.recipe import GroupSpec, Recipe, SiteSpec
from ditq.calibration.stats import ActivationCollector
from ditq.errors import DitqError
from ditq.export.fold import fold_state
from ditq.models.dit import LoadedModel, quant_sites
from ditq.runtime.sampler import make_scheduler, sample

log = logging.getLogger(__name__)
ForwardLoop = Callable[[ActivationCollector], None]


@dataclass(frozen=True)
class CalibConfig:
    steps: int = 100
    samples: int = 16
    cfg_scale: float = 3.0
    seed: int = 0
    scheduler: str | None = None  # None: the model's own scheduler class
    rows_per_call: int = 32
    w_bits: int = 8
    a_bits: int = 8
    progress: bool = True

    def __post_init__(self) -> None:
        if self.steps < 1 or self.samples < 1:
            raise DitqError(f"--steps and --samples must be >= 1, got {self.steps} and {self.samples}")
        if self.w_bits != 8 or self.a_bits != 8:
            raise DitqError(f"W{self.w_bits}A{self.a_bits} is not supported yet; use 8-bit weights and activations")


def sampler_forward_loop(model: LoadedModel, config: CalibConfig) -> ForwardLoop:
    """The default calibration data: the FP model's own sampling trajectories, CFG batch included."""

    def loop(collector: ActivationCollector) -> None:
        denoiser = model.denoiser()
        scheduler = make_scheduler(model.scheduler_config, config.scheduler)
        labels = torch.arange(config.samples) % model.num_classes
        bar = tqdm(total=config.steps, desc="calibrate", disable=not config.progress, leave=False)

        def denoise(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            collector.set_timestep(int(round(float(t[0]))))
            bar.update(1)
            return denoiser(x, t, y)

        sample(denoise, scheduler, labels, steps=config.steps, cfg_scale=config.cfg_scale,
               null_class=model.null_class, sample_shape=model.sample_shape, seed=config.seed)
        bar.close()

    return loop


@torch.no_grad()
def calibrate(model: LoadedModel, method: MethodConfig, config: CalibConfig,
              forward_loop: ForwardLoop | None = None) -> Recipe:
    """Collect statistics with ``forward_loop`` (default: the FP sampler), let ``method`` decide, build a Recipe."""
    start = time.perf_counter()
    sites = quant_sites(model.transformer)
    collector = ActivationCollector(model.transformer, sites, rows_per_call=config.rows_per_call, seed=config.seed)
    try:
        (forward_loop or sampler_forward_loop(model, config))(collector)
    finally:
        collector.remove()
    if not collector.timesteps:
        raise DitqError("the calibration forward loop never called the model")
    stats = collector.result()
    state = model.transformer.state_dict()
    ctx = Context(
        sites=sites, stats=stats, timesteps=collector.timesteps,
        weights={s.name: [state[f"{lin}.weight"].float() for lin in s.linears] for s in sites},
        num_train_timesteps=model.num_train_timesteps, w_bits=config.w_bits, a_bits=config.a_bits,
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the searches run many tiny GEMMs: thread hand-offs would dominate
    try:
        sol = method.solve(ctx)
    finally:
        torch.set_num_threads(threads)
    folded, _ = fold_state(state, sites, {s.name: sol.shifts[s.name][0] for s in sites}, sol.smooth)
    tensors: dict[str, torch.Tensor] = {}
    for site in sites:
        tensors[f"{site.name}.smooth"] = sol.smooth[site.name].float()
        for g in range(len(sol.grouping.segments)):
            tensors[f"g{g}/{site.name}.shift"] = sol.shifts[site.name][g].float()
            tensors[f"g{g}/{site.name}.act_scale"] = sol.act_scales[site.name][g].reshape(()).float()
        for lin in site.linears:  # folded weights are shared by all groups (smoothing is per site)
            tensors[f"{lin}.w_scale"] = weight_scales(folded[f"{lin}.weight"].float(), config.w_bits,
                                                      search=sol.weight_clip_search)
    grouping = sol.grouping
    recipe = Recipe(
        method=method.name, params=method.params(), model_source=model.source, model_sha256=model.sha256,
        num_train_timesteps=model.num_train_timesteps, w_bits=config.w_bits, a_bits=config.a_bits,
        groups=tuple(GroupSpec(g, grouping.intervals[g], tuple(sorted(grouping.members(g))))
                     for g in range(len(grouping.segments))),
        sites=tuple(SiteSpec(s.name, s.linears, sol.alphas[s.name]) for s in sites),
        tensors=tensors,
        calibration={**{k: v for k, v in asdict(config).items() if k != "progress"},
                     "seconds": round(time.perf_counter() - start, 3)},
        cost_curve=tuple(grouping.cost_curve),
    )
    recipe.check()
    log.info("calibrated %s: %d groups in %.1f s", method.name, recipe.num_groups, recipe.calibration["seconds"])
    return recipe
