"""The grid itself: FP references per step count, then per method and bit width calibrate once, export the ONNX
set, and evaluate at every step count against the FP run of the same seeds and noise (``bench.quality``)."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ditq.bench.quality_grid.config import (
    BITS,
    FORMATS,
    TINY,
    WEIGHT_ONLY,
    QualityConfig,
    parse_method,
)
from ditq.bench.quality_grid.peers import peer_rows
from ditq.bench.quality_grid.plots import write_plots
from ditq.bench.quality_grid.report import cell_metrics, jsonable, write_results
from ditq.bench.quality_grid.seeds import image_metrics, paired_comparisons, summarize
from ditq.core.threads import torch_threads
from ditq.errors import DitqError

log = logging.getLogger("ditq.bench.quality_grid")


def run_quality_grid(out: Path, config: QualityConfig = QualityConfig(), *, force: bool = False,
                     progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the grid; write everything into ``out`` (all-or-nothing); returns the ``quality.json`` body."""
    from ditq.artifacts.outputs import staging_dir

    say = progress or (lambda msg: log.info("%s", msg))
    with torch_threads(config.threads), staging_dir(
            Path(out), kind="ditq.bench.quality", force=force,
            inputs=[] if config.model in ("demo", TINY) else [config.model]) as tmp:
        result, grid_rows = _run(tmp, config, say)
        result["output"] = str(out)
        if config.plots:
            result["plots"] = write_plots(result, tmp, grid_rows)
        write_results(result, tmp)
    return result


def _load(config: QualityConfig, root: Path) -> Any:
    from ditq.models.loading import load_model

    if config.model == TINY:
        from ditq.models.tiny import save_tiny_model_dir

        return load_model(save_tiny_model_dir(root / "model"))
    return load_model(config.model)


def _scorer(model: Any, say: Callable[[str], None]) -> tuple[Any, str]:
    """The digits classifier, for digits models only: the demo DiT or ``train-demo --arch pixart`` (16x16x1 images,
    10 conditions; it knows nothing else)."""
    from ditq.testbed.scoring import ImageScorer

    if tuple(model.sample_shape) != (1, 16, 16) or model.num_conditions != 10:
        return None, "class accuracy and Fréchet distance need the demo model's digits classifier: not computed"
    try:
        return ImageScorer(), ""
    except (DitqError, OSError) as err:
        say(f"no digits classifier ({err}); class accuracy and Fréchet distance are skipped")
        return None, f"the digits classifier could not be loaded ({err}): class metrics not computed"


@dataclass
class _Grid:
    """What every cell is measured against, and what the cells add up to."""

    model: Any
    config: QualityConfig
    scorer: Any
    root: Path
    reference: Any  # the FP reference graph, shared by every ONNX set
    specs: dict[int, Any]  # step count -> SamplingSpec
    refs: dict[int, Any]  # step count -> FPReference
    cells: list[dict[str, Any]] = field(default_factory=list)
    recipes: dict[str, Any] = field(default_factory=dict)
    agreement: dict[str, Any] = field(default_factory=dict)
    grid_rows: dict[str, torch.Tensor] = field(default_factory=dict)  # W4A8 sample images per method
    skipped: list[str] = field(default_factory=list)  # "method-bits" cells with no such format (qdit/viditq FP8)


def _fp_rows(grid: _Grid, labels: torch.Tensor, say: Callable[[str], None]) -> list[dict[str, Any]]:
    """The FP reference run at every step count (``grid.refs``), and its floor rows."""
    from ditq.testbed.scoring import fp_reference

    rows = []
    for s in grid.config.steps:
        say(f"FP reference, {s} steps")
        grid.refs[s] = fp_reference(grid.model, labels, grid.specs[s])
        rows.append({"method": "fp", "bits": "FP32", "steps": s, **(grid.scorer.score(grid.refs[s].images, labels)
                                                                   if grid.scorer else {})})
    return rows


def _run(root: Path, config: QualityConfig, say: Callable[[str], None]
         ) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The grid's measurements, and the W4A8 sample images per method for the plot."""
    from ditq.calibration.calibrate import CalibConfig
    from ditq.calibration.methods import METHODS
    from ditq.export.onnx_export import export_reference

    started = time.perf_counter()
    model = _load(config, root)
    scorer, scorer_note = _scorer(model, say)
    labels = torch.arange(config.eval_samples) % model.num_conditions
    grid = _Grid(model, config, scorer, root, None, {s: config.spec(s) for s in config.steps}, {})
    fp_rows = _fp_rows(grid, labels, say)
    say("exporting the FP reference graph (shared by every ONNX set)")
    grid.reference = export_reference(model)
    grid.grid_rows["fp"] = grid.refs[max(config.steps)].images[:20]
    for method in config.methods:
        name, variant = parse_method(method)
        own = METHODS[name].calibration_defaults
        for seed in config.seeds:  # each seed: its own calibration data, recipe, export and evaluation
            calib = CalibConfig(steps=config.calib_steps or own.get("steps", CalibConfig.steps),
                                samples=config.calib_samples or own.get("samples", CalibConfig.samples),
                                cfg_scale=config.cfg_scale, seed=seed, progress=False)
            recipes: dict[tuple[int, str, int], Any] = {}  # W4A16 is the W4A8 recipe exported weight-only: once
            for bits in config.bits:
                if (bits in FORMATS or bits in WEIGHT_ONLY) and not METHODS[name].supports_fp8:
                    if seed == config.seeds[0]:
                        say(f"{method}-{bits}: skipped ({name} quantizes activations dynamically; {bits} is static "
                            "only)")
                        grid.skipped.append(f"{method}-{bits}")
                    continue
                _run_cell(grid, method, bits, calib, say, recipes)
    peers, peer_note = peer_rows(model, config, grid.refs, grid.specs, scorer, say)
    multi = len(config.seeds) > 1
    return {
        "kind": "ditq.bench.quality", "config": jsonable(asdict(config)),
        "model": {"source": "tiny (seeded, saved in model/)" if config.model == TINY else model.source,
                  "sha256": model.sha256,
                  "parameters": sum(p.numel() for p in model.transformer.parameters()),
                  "sample_shape": list(model.sample_shape)},
        "sampling": {"scheduler": model.scheduler_config.get("_class_name", "DDPMScheduler"),
                     "cfg_scale": config.cfg_scale, "seed": config.seed, "images": config.eval_samples,
                     "sqnr_images": min(config.sqnr_samples, config.eval_samples)},
        "scorer_note": scorer_note, "fp": fp_rows, "cells": grid.cells, "recipes": grid.recipes,
        "agreement": grid.agreement, "peers": peers, "peer_note": peer_note, "skipped": grid.skipped,
        "calib_seeds": list(config.seeds), "summary": summarize(grid.cells + peers) if multi else [],
        "paired": paired_comparisons(grid.cells + peers),
        "seconds": round(time.perf_counter() - started, 1),
    }, grid.grid_rows


def _run_cell(grid: _Grid, method: str, bits: str, calib: Any, say: Callable[[str], None],
              recipes: dict[tuple[int, str, int], Any]) -> None:
    """One method at one bit width: calibrate, export, check ONNX Runtime against torch, evaluate every step count
    (and on ONNX Runtime too when it is the agreement cell)."""
    from ditq.bench.quality import evaluate
    from ditq.calibration.calibrate import CalibConfig, calibrate
    from ditq.calibration.methods import method_config
    from ditq.export.onnx_export import export_onnx
    from ditq.runtime.backends import onnxruntime_backend, torch_backend

    config, model = grid.config, grid.model
    name, variant = parse_method(method)
    first = calib.seed == config.seeds[0]  # the seed whose cell gives the sample grid and the ORT agreement check
    key = f"{method}-{bits}" + (f"-seed{calib.seed}" if len(config.seeds) > 1 else "")
    folder = "".join(c if c.isalnum() or c in "-_." else "_" for c in key)
    w_bits = BITS[bits]
    quantizer = (w_bits, FORMATS.get(bits, "int"), config.w4_block if w_bits == 4 else 0)
    if quantizer in recipes:  # same method, same quantizers: only the export differs (W4A8 / W4A16)
        say(f"{key}: the {method} recipe of these weight quantizers, calibrated already")
        recipe = recipes[quantizer]
    else:
        say(f"{key}: calibrating ({calib.steps} steps x {calib.samples} samples)")
        params = {**config.method_params.get(name, {}), **variant}
        recipe = recipes[quantizer] = calibrate(model, method_config(name, **params), CalibConfig(
            **{**asdict(calib), "w_bits": w_bits, "fmt": quantizer[1], "w_block": quantizer[2]}))
    recipe.write(grid.root / "recipes" / folder)
    say(f"{key}: exporting")
    weight_only = bits in WEIGHT_ONLY  # TensorRT's INT4 form: the graphs (and their torch reference) keep float inputs
    art = export_onnx(model, recipe, grid.root / "onnx" / folder, recipe_dir=grid.root / "recipes" / folder,
                      progress=False, reference=grid.reference, target="tensorrt" if weight_only else "onnxruntime")
    size = artifact_bytes(art)
    backend = _weight_only_backend(model, recipe, art) if weight_only else torch_backend(model, recipe)
    ort = onnxruntime_backend(art, fuse=False)
    consistency, margin = _ort_vs_torch(grid.refs[min(config.steps)], backend, ort, recipe)
    grid.recipes[key] = _recipe_summary(recipe, size, consistency, margin)
    top = max(config.steps)
    for s in config.steps:
        say(f"{key}: evaluating at {s} steps")
        q = evaluate(model, backend, grid.refs[s], grid.specs[s], grid.scorer, sqnr_rows=config.sqnr_samples)
        images = q.pop("images")
        q.update(image_metrics(images, grid.refs[s].images))
        if bits == "W4A8" and s == top and first:
            grid.grid_rows[method] = images[:20]
        grid.cells.append({"method": method, "bits": bits, "steps": s, "calib_seed": calib.seed, "backend": "torch",
                           **cell_metrics(q),
                           "groups": recipe.num_groups, "dynamic": recipe.dynamic_activations,
                           "calibration_seconds": recipe.calibration["seconds"], "artifact_bytes": size,
                           "ort_vs_torch_sqnr_db": consistency, "ort_vs_torch_margin_db": margin})
    if (method, bits) == tuple(config.agreement or ("htg", "W4A8")) and first:
        s = min(config.steps)
        say(f"{key}: evaluating at {s} steps on ONNX Runtime (exact Q/DQ) as well")
        q = evaluate(model, ort, grid.refs[s], grid.specs[s], grid.scorer, sqnr_rows=config.sqnr_samples)
        q.update(image_metrics(q.pop("images"), grid.refs[s].images))
        torch_cell = next(c for c in grid.cells if (c["method"], c["bits"], c["steps"], c["calib_seed"])
                          == (method, bits, s, calib.seed))
        grid.agreement = {"method": method, "bits": bits, "steps": s, "onnxruntime": cell_metrics(q),
                          "torch": {k: torch_cell[k] for k in cell_metrics(q)}}


def _weight_only_backend(model: Any, recipe: Any, art: Any) -> Any:
    """The torch reference of a weight-only (W4A16) set: the recipe's weights, float activations on the set's
    weight-only Linears (``validation.run.reference_denoiser``, what the exported graphs compute)."""
    import torch

    from ditq.runtime.backends import GroupedBackend
    from ditq.validation.run import reference_denoiser

    return GroupedBackend.from_loader(
        f"fake-quant-{recipe.method}-w4a16", [g.interval for g in recipe.groups],
        lambda: [torch.no_grad()(reference_denoiser(model, recipe, art, g.group_id).predict) for g in recipe.groups],
        num_classes=model.num_classes if model.kind == "dit" else None)


def artifact_bytes(art: Any) -> int:
    """What a deployment of the quantized set ships: the group graphs plus the ``weights.bin`` byte ranges they
    reference (each once; the FP reference graph's own weights, also in ``weights.bin``, are not counted)."""
    import onnx

    ranges: set[tuple[int, int]] = set()
    total = 0
    for g in art.groups:
        path = art.root / g.file
        total += path.stat().st_size
        for t in onnx.load(str(path), load_external_data=False).graph.initializer:
            if t.data_location == onnx.TensorProto.EXTERNAL:
                info = {e.key: e.value for e in t.external_data}
                ranges.add((int(info.get("offset", 0)), int(info["length"])))
    return total + sum(length for _, length in ranges)


@torch.no_grad()
def _ort_vs_torch(ref: Any, backend: Any, ort: Any, recipe: Any) -> tuple[float, float]:
    """On one FP-trajectory input per group (the first 8 images and their CFG twins): the min over groups of the
    SQNR (dB) between ONNX Runtime's exact-QDQ output and the torch fake-quant output, and the min over groups of
    its margin over the quantization error at the same input (that SQNR minus the torch output's SQNR vs FP). The
    margin is the reading that does not depend on where a group sits: near t = 0 the quantization error itself is
    large (the min step SQNR), and the few values float rounding order moves by one step weigh more there."""
    from ditq.bench.quality import _cfg_rows
    from ditq.core.cond import select
    from ditq.core.metrics import sqnr_db

    worst = margin = math.inf
    for g in recipe.groups:
        inside = [i for i, inp in enumerate(ref.inputs) if g.interval[0] <= float(inp[1][0]) <= g.interval[1]]
        if not inside:
            continue
        i = inside[len(inside) // 2]
        inp = ref.inputs[i]
        idx = _cfg_rows(inp[0].shape[0], 8)
        x, t, y = inp[0][idx], inp[1][idx], select(inp[2], idx)
        q = backend(x, t, y)
        agree = sqnr_db(ort(x, t, y), q)
        worst, margin = min(worst, agree), min(margin, agree - sqnr_db(q, ref.outputs[i][idx]))
    return worst, margin


def _recipe_summary(recipe: Any, size: int, consistency: float, margin: float) -> dict[str, Any]:
    specs = [recipe.linear_spec(lin) for s in recipe.sites for lin in s.linears]
    return {"groups": [list(g.interval) for g in recipe.groups], "dynamic_activations": recipe.dynamic_activations,
            "weight_bits": sorted({s.w_bits for s in specs}), "formats": list(recipe.formats),
            "calibration": recipe.calibration,
            "alphas": {s.name: s.alpha for s in recipe.sites}, "artifact_bytes": size,
            "ort_vs_torch_sqnr_db": consistency, "ort_vs_torch_margin_db": margin}
