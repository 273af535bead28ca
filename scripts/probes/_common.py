"""Set-up the issue-13 probes share: an HTG calibration's internals, and per-block layer inputs along a sampler
run. Imported by the probe scripts of this directory (run them as ``python scripts/probes/NAME.py``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ditq.bench.quality import evaluate
from ditq.bench.quality_grid.config import parse_method
from ditq.bench.quality_grid.seeds import image_metrics
from ditq.calibration.calibrate import CalibConfig, calibrate
from ditq.calibration.methods import htg, method_config
from ditq.core.sampler import make_scheduler, sample
from ditq.models.loading import load_model, make_denoiser
from ditq.testbed.scoring import SamplingSpec, fp_reference


def htg_solution(src: str, seed: int, w_bits: int = 8, **params: Any) -> tuple[Any, Any, Any]:
    """Calibrate HTG on ``src`` (25 steps x 8 samples, the global alpha criterion unless ``params`` say otherwise)
    and return the model with the ``Context`` and ``Solution`` that ``calibrate`` builds internally."""
    captured: dict[str, Any] = {}
    original = htg.HTGConfig.solve

    def solve(self: htg.HTGConfig, ctx: Any) -> Any:
        captured["ctx"], captured["sol"] = ctx, original(self, ctx)
        return captured["sol"]

    htg.HTGConfig.solve = solve  # type: ignore[method-assign]
    try:
        model = load_model(src)
        calibrate(
            model,
            method_config("htg", **{"alpha_criterion": "global", **params}),
            CalibConfig(steps=25, samples=8, seed=seed, w_bits=w_bits, progress=False),
        )
    finally:
        htg.HTGConfig.solve = original  # type: ignore[method-assign]
    return model, captured["ctx"], captured["sol"]


def block_taps(
    src: str, steps: int, taps: dict[str, tuple[Callable[[Any], torch.nn.Module], str]]
) -> tuple[Any, list[dict[str, list[torch.Tensor]]]]:
    """Sample 8 classes with DDPM, CFG 3, seed 0 on ``src`` and record, per transformer block and per tap
    ``name -> (module of the block, "input" | "output")``, that module's input or output at every call."""
    model = load_model(src)
    blocks = model.transformer.eval().transformer_blocks
    rec: list[dict[str, list[torch.Tensor]]] = [{name: [] for name in taps} for _ in blocks]
    hooks = []
    for i, block in enumerate(blocks):
        for name, (get, where) in taps.items():
            if where == "input":
                hook = get(block).register_forward_pre_hook(
                    lambda _m, inp, i=i, name=name: rec[i][name].append(inp[0].detach())
                )
            else:
                hook = get(block).register_forward_hook(
                    lambda _m, _inp, out, i=i, name=name: rec[i][name].append(out.detach())
                )
            hooks.append(hook)
    denoiser = make_denoiser(model.transformer)
    try:
        with torch.no_grad():
            sample(
                denoiser.predict,
                make_scheduler(model.scheduler_config),
                model.cond(torch.arange(8) % model.num_conditions),
                steps=steps,
                cfg_scale=3.0,
                null_cond=model.null_cond(),
                sample_shape=model.sample_shape,
                seed=0,
            )
    finally:
        for hook in hooks:
            hook.remove()
    return model, rec


def fake_int8(x: torch.Tensor, amax: torch.Tensor | float) -> torch.Tensor:
    """Symmetric INT8 fake quantization of ``x`` with the range ``amax`` (a scalar, or per row when broadcast)."""
    scale = amax / 127
    return (x / scale).round().clamp(-127, 127) * scale


def calibrated_reference(src: str, steps: int, images: int, entry: str, seed: int) -> tuple[Any, Any, Any, Any]:
    """The end-to-end probes' set-up: the model, its FP reference images (DDPM ``steps``, CFG 3, ``images`` from
    seed 0) with their sampling spec, and the recipe of ``entry`` (``method[:key=value...]``) calibrated 25 x 8
    with calibration seed ``seed``. Returns (model, spec, ref, recipe)."""
    model = load_model(src)
    spec = SamplingSpec(steps=steps, cfg_scale=3.0, seed=0)
    ref = fp_reference(model, torch.arange(images) % model.num_conditions, spec)
    name, params = parse_method(entry)
    recipe = calibrate(model, method_config(name, **params),
                       CalibConfig(steps=25, samples=8, seed=seed, progress=False))
    return model, spec, ref, recipe


def end_to_end_row(label: str, model: Any, denoise: Any, spec: Any, ref: Any, **extra: Any) -> dict[str, Any]:
    """Sample with ``denoise`` on the reference's noise: PSNR global (pooled MSE) / mean vs FP and the mean step
    SQNR (teacher-forced on 8 images), rounded, with ``extra`` fields."""
    q = evaluate(model, denoise, ref, spec, None, sqnr_rows=8)
    return {"label": label, "global": round(image_metrics(q["images"], ref.images)["psnr_global_db"], 2),
            "mean": round(float(q["psnr_db"]), 2), "sqnr": round(q["sqnr_mean_db"], 2), **extra}



def cached_recipe(model: Any, src: str, entry: str, seed: int) -> Any:
    """The recipe of ``entry`` (``method[:key=value...]``) calibrated as ``ditq bench quality`` does (100 x 16,
    calibration seed ``seed``), cached under /tmp/ditq_drift so the drift probes calibrate each once."""
    from pathlib import Path

    from ditq.artifacts.recipe import Recipe

    cache = Path("/tmp/ditq_drift") / "".join(c if c.isalnum() else "_" for c in f"{src}_{entry}_{seed}")
    if (cache / "manifest.json").exists():
        return Recipe.load(cache)
    name, params = parse_method(entry)
    recipe = calibrate(model, method_config(name, **params), CalibConfig(seed=seed, progress=False))
    recipe.save(cache, force=True)
    return recipe


def psnr_row(label: str, images: torch.Tensor, ref: Any) -> torch.Tensor:
    """Print ``label``'s PSNR global / mean vs the FP images and its three worst images; return the per-image PSNR."""
    m = image_metrics(images, ref.images)
    psnr = torch.tensor(m["psnr_per_image_db"])
    worst = torch.argsort(psnr)[:3]
    print(f"{label:22s} global {m['psnr_global_db']:6.2f}  mean {float(psnr.mean()):6.2f}  worst "
          + ", ".join(f"{int(i)} ({float(psnr[i]):.1f})" for i in worst), flush=True)
    return psnr


def scale_group(key: str) -> int:
    """The timestep group of a per-group recipe tensor key ``g{group}/{site}.{name}``."""
    return int(key[1:key.index("/")])


def range_pair(model: Any, src: str, seed: int) -> tuple[Any, Any]:
    """HTG's recipes with the reservoir and with the exact rotated ranges (``cached_recipe``, calibration seed
    ``seed``): one solve, so they must differ in the activation scales only (checked)."""
    res, exact = (cached_recipe(model, src, entry, seed) for entry in ("htg", 'htg:rotation_ranges="exact"'))
    assert all(torch.equal(res.tensors[k], exact.tensors[k]) for k in res.tensors if not k.endswith(".act_scale"))
    return res, exact


def exact_in(tensors: dict[str, torch.Tensor], exact: Any, groups: Any) -> dict[str, torch.Tensor]:
    """Recipe ``tensors`` with ``exact``'s activation scales in the timestep groups ``groups``."""
    return {k: (exact.tensors[k] if k.endswith(".act_scale") and scale_group(k) in groups else v)
            for k, v in tensors.items()}
