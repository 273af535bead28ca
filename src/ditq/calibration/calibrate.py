"""``calibrate(model, method, config) -> Recipe``: statistics, the method's decisions, weight scales."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from ditq.artifacts.recipe import GroupSpec, LinearSpec, Recipe, SiteSpec
from ditq.calibration.methods import MethodConfig
from ditq.calibration.methods.base import Context, folded_group_inputs, input_factor, input_moments
from ditq.calibration.stats import ActivationCollector, RangeCollector
from ditq.core.cond import Cond
from ditq.core.fold import fold_state
from ditq.core.quantizers import (
    FORMATS,
    WEIGHT_ROUNDINGS,
    dequantize_weight,
    fake_quant,
    fake_quant_weight,
    gptq_codes,
    rotate,
    rotate_weight,
    scale_from_amax,
    weight_scales,
)
from ditq.core.sampler import make_scheduler, sample
from ditq.core.threads import torch_threads
from ditq.errors import DitqError
from ditq.models.loading import LoadedModel, make_denoiser, quant_sites
from ditq.models.quantized import group_denoiser

log = logging.getLogger(__name__)
# Model Optimizer's convention: the caller's loop runs the model (``loop(transformer)``) on its own data; ditq's
# hooks record the activations, keyed on the timestep each call passes the transformer
ForwardLoop = Callable[[torch.nn.Module], Any]


@dataclass(frozen=True)
class CalibConfig:
    steps: int = 100
    samples: int = 16
    cfg_scale: float = 3.0
    seed: int = 0
    scheduler: str | None = None  # None: the model's own scheduler class (the training schedule is always the model's)
    rows_per_call: int = 32
    w_bits: int = 8
    a_bits: int = 8
    w_block: int = 0  # INT4/INT8 weight block along the input (0: per output channel)
    weight_clip: str = "output"  # clip search criterion (methods that search): "output" error or weight "mse"
    fmt: str = "int"  # "int" (w_bits/a_bits integer grids) or "fp8_e4m3" (W8A8-FP8, E4M3 grids, scale amax/448)
    # "gptq" (default; docs/weight_rounding.md: +1.5 dB W8A8, +1.9..5.4 dB W4A8 on the demo DiT): GPTQ rounding
    # with H = E[x^T x] pooled over the groups' folded calibration inputs, codes stored in the recipe (same scales);
    # "nearest": consumers round W / w_scale
    weight_rounding: str = "gptq"
    # per-group bias correction of every static Linear: minus its mean output error on the group's calibration
    # inputs, added to that group's (already per-group) bias; free at run time, but on top of GPTQ it measured
    # -0.3..+0.4 dB (seed noise) on both testbeds, so it is off by default (docs/bias_correction.md)
    bias_correction: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        if self.steps < 1 or self.samples < 1:
            raise DitqError(f"--steps and --samples must be >= 1, got {self.steps} and {self.samples}")
        if self.w_bits not in (8, 4) or self.a_bits != 8:
            raise DitqError(f"W{self.w_bits}A{self.a_bits} is not supported; use --w-bits 8 or 4 with 8-bit "
                            "activations")
        if self.weight_clip not in ("output", "mse"):
            raise DitqError(f"weight_clip must be 'output' or 'mse', got {self.weight_clip!r}")
        if self.w_block not in (0, 32, 64, 128):
            raise DitqError(f"--w-block must be 0 (per output channel), 32, 64 or 128, got {self.w_block}")
        if self.weight_rounding not in WEIGHT_ROUNDINGS:
            raise DitqError(f"weight rounding {self.weight_rounding!r} is not one of {', '.join(WEIGHT_ROUNDINGS)}")
        if self.fmt not in FORMATS:
            raise DitqError(f"quantizer format {self.fmt!r} is not one of {', '.join(FORMATS)}")
        if self.fmt == "fp8_e4m3" and (self.w_bits, self.w_block) != (8, 0):
            raise DitqError(f"FP8 (--format fp8) is W8A8 per output channel; got --w-bits {self.w_bits} "
                            f"--w-block {self.w_block}: drop them or use --format int")


class SamplerLoop:
    """The default calibration data: the FP model's own sampling trajectories, CFG batch included, over
    ``config.samples`` conditions cycling through ``rows`` (class labels or caption rows; default: all).
    ``run`` repeats the same trajectories' sampling with other models (a calibration that compares candidate
    recipes end to end samples them on the calibration's own noise); ``finals`` keeps the last call's final
    samples (the FP model's, as the hooks only read)."""

    def __init__(self, model: LoadedModel, config: CalibConfig, rows: Any = None) -> None:
        self.model, self.config, self.rows = model, config, rows
        self.finals: torch.Tensor | None = None

    def __call__(self, transformer: torch.nn.Module) -> None:
        denoiser = make_denoiser(transformer)
        self.finals = self.run(lambda _t: denoiser.predict, "calibrate")

    def run(self, denoiser_at: Callable[[float], Callable[..., torch.Tensor]], desc: str) -> torch.Tensor:
        """Sample the calibration's conditions, steps, CFG and noise seed with ``denoiser_at(timestep)`` at each
        step; the final samples."""
        model, config = self.model, self.config
        scheduler = make_scheduler(model.scheduler_config, config.scheduler)
        ids = torch.arange(config.samples) % model.num_conditions
        if self.rows is not None:
            ids = torch.as_tensor(list(self.rows), dtype=torch.int64)[torch.arange(config.samples) % len(self.rows)]
        bar = tqdm(total=config.steps, desc=desc, disable=not config.progress, leave=False)

        def denoise(x: torch.Tensor, t: torch.Tensor, c: Cond) -> torch.Tensor:
            bar.update(1)
            return denoiser_at(float(t.reshape(-1)[0]))(x, t, c)

        try:
            return sample(denoise, scheduler, model.cond(ids), steps=config.steps, cfg_scale=config.cfg_scale,
                          null_cond=model.null_cond(), sample_shape=model.sample_shape, seed=config.seed)
        finally:
            bar.close()


def sampler_forward_loop(model: LoadedModel, config: CalibConfig, rows: Any = None) -> SamplerLoop:
    """The default calibration forward loop (``SamplerLoop``)."""
    return SamplerLoop(model, config, rows)


@torch.no_grad()
def calibrate(model: LoadedModel, method: MethodConfig, config: CalibConfig,
              forward_loop: ForwardLoop | None = None) -> Recipe:
    """Collect statistics while ``forward_loop(model.transformer)`` runs the model (default: the FP sampler), let
    ``method`` decide, build a Recipe. Timesteps are read from the transformer's ``timestep`` argument."""
    start = time.perf_counter()
    if config.fmt != "int" and not type(method).supports_fp8:
        raise DitqError(f"method {method.name} quantizes activations dynamically, which has no FP8 form in ditq; "
                        "use --format int, or a static method (htg, smoothquant, ptq4dit, minmax) for FP8")
    sites = quant_sites(model.transformer)
    collector = ActivationCollector(model.transformer, sites, rows_per_call=config.rows_per_call, seed=config.seed,
                                    timestep_from=model.transformer)
    probes: list[tuple[torch.Tensor, torch.Tensor, Cond]] = []
    loop = forward_loop or sampler_forward_loop(model, config)
    if method.needs_model:  # record the model inputs too: the method evaluates candidate quantizers on them
        names = model.denoiser().cond_names
        probe_hook = model.transformer.register_forward_pre_hook(_probe_recorder(probes, names), with_kwargs=True)
    try:
        loop(model.transformer)
    finally:
        collector.remove()
        if method.needs_model:
            probe_hook.remove()
    if not collector.timesteps:
        raise DitqError("the calibration forward loop never called the model")
    stats = collector.result()
    state = model.transformer.state_dict()
    threads = torch.get_num_threads()
    ctx = Context(
        sites=sites, stats=stats, timesteps=collector.timesteps,
        weights={s.name: [state[f"{lin}.weight"].float() for lin in s.linears] for s in sites},
        num_train_timesteps=model.num_train_timesteps, w_bits=config.w_bits, a_bits=config.a_bits,
        w_block=config.w_block, weight_clip=config.weight_clip, fmt=config.fmt, transformer=model.transformer,
        probes=probes, threads=threads, progress=config.progress,
    )
    with torch_threads(1):  # the searches run many tiny GEMMs: thread hand-offs would dominate
        sol = method.solve(ctx)
    folded, _ = fold_state(state, sites, {s.name: sol.shifts[s.name][0] for s in sites}, sol.smooth)
    specs = {lin: sol.linear_specs.get(lin) or ctx.default_spec(s) for s in sites for lin in s.linears}
    select = bool(sol.exact_range_sites) and sol.exact_range_select
    if select and not isinstance(loop, SamplerLoop):
        log.warning("the rotated ranges are chosen by sampling the calibration's own trajectories, which a custom "
                    "forward loop does not define: keeping the reservoir ranges")
        sol.info["rotation_ranges"] = {"chosen": "reservoir", "why": "custom forward loop"}
        sol.exact_range_sites, select = (), False
    reservoir = {name: sol.act_scales[name].clone() for name in sol.exact_range_sites} if select else {}
    if sol.exact_range_sites:
        _exact_ranges(model, loop, sites, sol, specs, config)
    tensors: dict[str, torch.Tensor] = {}
    unchanged: dict[str, torch.Tensor] = {}  # with ``select``: the reservoir candidate's own scales (and corrections)
    correct = config.bias_correction and all(f"{lin}.bias" in state for s in sites for lin in s.linears)
    if config.bias_correction and not correct:
        log.warning("some quantized Linears have no bias: no bias correction")
    for site in sites:
        tensors[f"{site.name}.smooth"] = sol.smooth[site.name].float()
        static = any(not specs[lin].dynamic for lin in site.linears)
        for g in range(len(sol.grouping.segments)):
            tensors[f"g{g}/{site.name}.shift"] = sol.shifts[site.name][g].float()
            if static:
                tensors[f"g{g}/{site.name}.act_scale"] = sol.act_scales[site.name][g].reshape(()).float()
            if site.name in reservoir:
                unchanged[f"g{g}/{site.name}.act_scale"] = reservoir[site.name][g].reshape(()).float()
        inputs = None
        gptq = config.weight_rounding == "gptq"
        weigh_inputs = gptq or (sol.weight_clip_search and config.weight_clip == "output")  # H = E[x^T x] needed
        group_rows = (folded_group_inputs(ctx, site, sol.grouping, sol.shifts[site.name], sol.smooth[site.name])
                      if weigh_inputs or correct else [])
        if weigh_inputs:
            inputs = torch.cat(group_rows)
        for lin in site.linears:  # folded weights are shared by all groups (smoothing is per site)
            spec = specs[lin]
            power = factor = None
            if inputs is not None and inputs.shape[0] >= inputs.shape[1]:
                power = input_moments(inputs, spec.rotation)
            elif inputs is not None:  # fewer rows than channels (large models, short calibration): use the rows
                factor = input_factor(inputs, spec.rotation)
            weight = rotate_weight(folded[f"{lin}.weight"], spec.rotation)
            clip_on_output = sol.weight_clip_search and config.weight_clip == "output"
            scale = weight_scales(weight, spec.w_bits, search=sol.weight_clip_search, block=spec.w_block,
                                  input_power=power if clip_on_output else None,
                                  input_factor=factor if clip_on_output else None, fmt=spec.fmt)
            tensors[f"{lin}.w_scale"] = scale
            if gptq:  # one solve per Linear: H pooled over every group's inputs, as the weights are shared
                assert inputs is not None
                h = power if power is not None else input_moments(inputs, spec.rotation)
                codes = gptq_codes(weight, scale, h, spec.w_bits, fmt=spec.fmt)
                tensors[f"{lin}.w_codes"] = codes.to(torch.int8 if spec.fmt == "int" else torch.float16)
            if correct and not spec.dynamic:
                qweight = (dequantize_weight(tensors[f"{lin}.w_codes"].float(), scale) if gptq
                           else fake_quant_weight(weight, scale, spec.w_bits, spec.fmt))
                for g, rows in enumerate(group_rows):
                    tensors[f"g{g}/{lin}.bias_correction"] = bias_correction(
                        rows, weight, qweight, float(sol.act_scales[site.name][g]), spec)
                    if site.name in reservoir:
                        unchanged[f"g{g}/{lin}.bias_correction"] = bias_correction(
                            rows, weight, qweight, float(reservoir[site.name][g]), spec)
    grouping = sol.grouping

    def build(tensors: dict[str, torch.Tensor]) -> Recipe:
        return Recipe(
            method=method.name, params=_as_json(method.params()), model_source=model.source,
            model_sha256=model.sha256, num_train_timesteps=model.num_train_timesteps, w_bits=config.w_bits,
            a_bits=config.a_bits,
            groups=tuple(GroupSpec(g, grouping.intervals[g], tuple(sorted(grouping.members(g))))
                         for g in range(len(grouping.segments))),
            sites=tuple(SiteSpec(s.name, s.linears, sol.alphas[s.name]) for s in sites),
            tensors=tensors,
            calibration=_as_json({**{k: v for k, v in asdict(config).items() if k != "progress"},
                                  "scheduler": type(make_scheduler(model.scheduler_config, config.scheduler)).__name__,
                                  "seconds": round(time.perf_counter() - start, 3),
                                  **({"method": sol.info} if sol.info else {})}),
            cost_curve=tuple(grouping.cost_curve),
            linear_specs={lin: spec for lin, spec in specs.items()
                          if spec != LinearSpec(config.w_bits, 0, "static", config.a_bits)},
            scheduler_config=_as_json(dict(model.scheduler_config)),
            weight_rounding=config.weight_rounding,
            bias_correction=correct and any(k.endswith(".bias_correction") for k in tensors),
        )

    recipe = build(tensors)
    if select:
        assert isinstance(loop, SamplerLoop)
        candidates = {"reservoir": build({**tensors, **unchanged}), "exact_but_final": recipe}
        chosen = _choose_by_sampling(model, loop, candidates, sol)
        recipe = build(candidates[chosen].tensors)  # its calibration record now holds the choice and its time
    recipe.check()
    log.info("calibrated %s: %d groups in %.1f s", method.name, recipe.num_groups, recipe.calibration["seconds"])
    return recipe


def _choose_by_sampling(model: LoadedModel, loop: SamplerLoop, candidates: dict[str, Recipe], sol: Any) -> str:
    """The candidate recipe whose fake-quantized model samples the calibration's own trajectories (its conditions,
    steps, CFG and noise) closest to the FP model's final samples, by the mean per-sample PSNR; ties go to the
    first. Records every candidate's PSNR and the choice in ``sol.info["rotation_ranges"]``.

    The choice is end to end on purpose: what decides between the reservoir and the exact ranges is whether the
    reservoir's slight clipping builds up along a long trajectory (it does on some models and not on others,
    docs/static_rotation.md), which no per-layer statistic measured here predicted."""
    start = time.perf_counter()
    with torch.no_grad():
        reference = loop.finals  # the FP samples of the calibration runs (the same trajectories)
        if reference is None:
            fp_den = model.denoiser()
            reference = loop.run(lambda _t: fp_den.predict, "ranges: FP")
        psnr = {}
        for name, recipe in candidates.items():
            built: dict[int, Any] = {}  # one group's model at a time: the steps visit the groups in order

            def denoiser_at(t: float, recipe: Recipe = recipe, built: dict[int, Any] = built) -> Any:
                g = recipe.group_of(t)
                if g not in built:
                    built.clear()
                    built[g] = group_denoiser(model, recipe, g).predict
                return built[g]

            images = loop.run(denoiser_at, f"ranges: {name}")
            # not core.metrics.psnr_db: that clamps to the [-1, 1] pixel range, and a latent model's final samples
            # are latents; the choice reads only the difference between candidates
            mse = (images.float() - reference.float()).square().flatten(1).mean(1).clamp(min=1e-20)
            psnr[name] = float((10 * torch.log10(4.0 / mse)).mean())  # [-1, 1] samples: peak-to-peak 2
    chosen = max(psnr, key=psnr.__getitem__)  # the first of equals
    sol.info["rotation_ranges"] = {"chosen": chosen, "mean_psnr_db": {k: round(v, 3) for k, v in psnr.items()},
                                   "seconds": round(time.perf_counter() - start, 3)}
    log.info("rotated ranges chosen by sampling the calibration trajectories: %s (mean PSNR vs FP %s; %.1f s)",
             chosen, ", ".join(f"{k} {v:.2f} dB" for k, v in psnr.items()), time.perf_counter() - start)
    return chosen


def _exact_ranges(model: LoadedModel, loop: ForwardLoop, sites: list[Any], sol: Any, specs: dict[str, LinearSpec],
                  config: CalibConfig) -> None:
    """Replace the reservoir amax of ``sol.exact_range_sites`` (rotated static inputs) by the exact amax over a
    second run of the calibration loop, per group of ``sol.exact_range_groups`` (default every group), in place. A
    group the second run does not reach keeps its reservoir scale (a loop that is not repeatable, e.g. an exhausted
    iterator: logged)."""
    chosen = [s for s in sites if s.name in sol.exact_range_sites]
    transforms: dict[str, Callable[[torch.Tensor, int], torch.Tensor]] = {}
    for site in chosen:
        shifts, smooth = sol.shifts[site.name].float(), sol.smooth[site.name].float()
        block = specs[site.linears[0]].rotation

        def transform(x: torch.Tensor, g: int, shifts: torch.Tensor = shifts, smooth: torch.Tensor = smooth,
                      block: int = block) -> torch.Tensor:
            return rotate((x - shifts[g]) / smooth, block)

        transforms[site.name] = transform
    collector = RangeCollector(model.transformer, chosen, transforms, sol.grouping.group_of,
                               len(sol.grouping.segments), timestep_from=model.transformer)
    start = time.perf_counter()
    try:
        loop(model.transformer)
    finally:
        collector.remove()
    ratios, missed = [], 0
    for name, amaxes in collector.amax.items():
        for g, amax in enumerate(amaxes):
            if sol.exact_range_groups is not None and g not in sol.exact_range_groups:
                continue
            if amax is None:
                missed += 1
                continue
            old = float(sol.act_scales[name][g])
            sol.act_scales[name][g] = scale_from_amax(amax, config.a_bits, config.fmt)
            ratios.append(float(sol.act_scales[name][g]) / old)
    if missed:
        log.warning("the second run of the calibration loop reached %d (site, group) pairs fewer than the first: "
                    "those keep the reservoir's range", missed)
    if ratios:
        r = torch.tensor(ratios)
        log.info("exact ranges of %d rotated sites (%.1f s): %.2fx the reservoir's (median; max %.2fx)",
                 len(chosen), time.perf_counter() - start, float(r.median()), float(r.max()))
        sol.info["exact_range_ratio"] = {"median": round(float(r.median()), 4), "max": round(float(r.max()), 4)}


def bias_correction(rows: torch.Tensor, weight: torch.Tensor, qweight: torch.Tensor, act_scale: float,
                    spec: LinearSpec) -> torch.Tensor:
    """Minus the mean output error [N] of one static Linear in one group: over the group's folded calibration rows
    x' (``folded_group_inputs``, rotated here by the Linear's R), ``mean(Q(x') Wq^T - x' W^T)`` with ``W`` its
    folded (rotated) float weight and ``Wq`` the weight it computes with. Added to the group's bias, it removes the
    part of the quantization error that is the same for every token (clipping and rounding biases that a
    per-tensor scale leaves), at no run-time cost."""
    x = rotate(rows, spec.rotation)
    err = fake_quant(x, act_scale, spec.a_bits, spec.fmt) @ qweight.float().T - x @ weight.float().T
    return -err.mean(0).float()


def _as_json(body: dict[str, Any]) -> dict[str, Any]:
    """``body`` as recipe.json will read it back (tuples become lists), so a fresh recipe equals a loaded one."""
    return json.loads(json.dumps(body))


PROBE_CALLS, PROBE_ROWS = 32, 16  # the most model calls (and rows of each) kept for the methods' evaluations


def _probe_recorder(probes: list[tuple[torch.Tensor, torch.Tensor, Cond]], names: tuple[str, ...], *,
                    max_calls: int = PROBE_CALLS, max_rows: int = PROBE_ROWS) -> Callable[..., None]:
    """Record the transformer's inputs for the methods that evaluate the model (they use a few calls spread over
    the trajectory, a few rows each), in bounded memory: at most ``max_calls`` calls, spread evenly over however
    many the loop makes (every ``stride``-th call, the stride doubling when the list is full), and at most
    ``max_rows`` rows of each, spread over the batch (CFG's conditional and unconditional halves alike). A
    full-size PixArt caption row alone is ~5 MB, so keeping every call of a 100-step run would cost gigabytes."""
    seen, stride = 0, 1

    def hook(_module: torch.nn.Module, args: tuple[torch.Tensor, ...], kwargs: dict[str, torch.Tensor]) -> None:
        nonlocal seen, stride
        x = args[0] if args else kwargs.get("hidden_states")
        t = kwargs.get("timestep")
        cond = {k: kwargs[k] for k in names if kwargs.get(k) is not None}
        if x is None or t is None or len(cond) != len(names):
            return
        keep = seen % stride == 0
        seen += 1
        if not keep:
            return
        rows = torch.linspace(0, x.shape[0] - 1, min(max_rows, x.shape[0])).round().long().unique()
        t = t.reshape(-1).expand(x.shape[0]) if t.numel() in (1, x.shape[0]) else t
        probes.append((x[rows].detach().clone(), t[rows].detach().clone(),
                       {k: v[rows].detach().clone() for k, v in cond.items()}))
        if len(probes) > max_calls:
            probes[:] = probes[::2]
            stride *= 2

    return hook
