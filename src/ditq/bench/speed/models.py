"""What is timed: the bench models (demo, architecture-only, or a directory), a recipe in seconds, and the
whole-sampling timing both backends share."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ditq.bench.speed.config import SpeedConfig
from ditq.bench.speed.machine import ratio, time_interleaved
from ditq.errors import DitqError


@dataclass
class BenchModel:
    name: str
    model: Any  # LoadedModel
    weights: str  # "trained" | "random"
    note: str = ""


def resolve_model(name: str, seed: int = 0) -> BenchModel:
    """``demo`` (random weights of its architecture while its trained weights are absent), an architecture
    name from ``models.configs``, or a local model directory."""
    from ditq.models.configs import ARCH_CONFIGS, random_model
    from ditq.models.loading import load_model

    if name == "demo":
        from ditq.testbed.demo import demo_model_dir

        root = demo_model_dir()
        if (root / "transformer" / "config.json").is_file() or (root / "config.json").is_file():
            return BenchModel("demo", load_model("demo"), "trained")
        return BenchModel("demo", random_model("demo-arch", seed), "random",
                          "demo weights not present: the demo architecture with random weights")
    if name in ARCH_CONFIGS:
        return BenchModel(name, random_model(name, seed), "random")
    if Path(name).expanduser().is_dir():
        return BenchModel(Path(name).name, load_model(name), "trained")
    raise DitqError(f"unknown model {name!r}; use demo, one of {', '.join(ARCH_CONFIGS)}, or a model directory")


def model_info(bm: BenchModel) -> dict[str, Any]:
    cfg = bm.model.config
    return {"name": bm.name, "source": bm.model.source, "weights": bm.weights, "note": bm.note,
            "params": sum(p.numel() for p in bm.model.transformer.parameters()),
            "tokens": (int(cfg.sample_size) // int(cfg.patch_size)) ** 2,
            "hidden": int(cfg.num_attention_heads) * int(cfg.attention_head_dim), "layers": int(cfg.num_layers),
            "sample_shape": list(bm.model.sample_shape)}


def quick_recipe(bm: BenchModel, config: SpeedConfig) -> tuple[Any, dict[str, Any]]:
    """A recipe in seconds: few calibration steps/samples (scale values do not change timing)."""
    from ditq.bench.quality_grid.config import parse_method
    from ditq.calibration.calibrate import CalibConfig, calibrate
    from ditq.calibration.methods import method_config
    from ditq.models.configs import GPU_MODELS

    method = config.method or ("minmax" if bm.name in GPU_MODELS else "htg")
    name, params = parse_method(method)  # "htg" or e.g. 'htg:act="token"'
    mc = method_config(name, **{**({"groups": config.groups} if name == "htg" else {}), **params})
    start = time.perf_counter()
    recipe = calibrate(bm.model, mc, CalibConfig(steps=config.calib_steps, samples=config.calib_samples,
                                                 seed=config.seed, progress=False))
    return recipe, {"method": method, "groups": recipe.num_groups, "steps": config.calib_steps,
                    "samples": config.calib_samples, "seconds": round(time.perf_counter() - start, 2)}


def time_sampling(bm: BenchModel, fns: dict[str, Callable[..., Any]], config: SpeedConfig,
                  sync: Callable[[], None] | None = None) -> dict[str, Any]:
    """A whole sampling run (``config.sampling_spec``: DDIM with CFG) per callable, FP and INT8 interleaved."""
    import torch

    from ditq.testbed.scoring import run_sampler

    model = bm.model
    spec = config.sampling_spec
    labels = torch.arange(config.sampling_batch) % model.num_conditions

    def run(fn: Callable[..., Any]) -> Callable[[], Any]:
        return lambda: run_sampler(model, fn, labels, spec)

    stats = time_interleaved({k: run(f) for k, f in fns.items()}, warmup=0, repeats=config.sampling_repeats,
                             sync=sync)
    fp, q = stats["fp"], stats["int8"]
    return {"scheduler": spec.scheduler, "steps": spec.steps, "images": config.sampling_batch,
            "model_batch": config.sampling_batch * (2 if spec.cfg_scale != 1.0 else 1), "cfg": spec.cfg_scale,
            "fp": fp, "int8": q, "ratio": ratio(q, fp, "median_ms")}
