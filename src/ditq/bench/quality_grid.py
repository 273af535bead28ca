"""``ditq bench quality``: the seed papers' comparison on our testbeds, method x {W8A8, W4A8} x sampler steps.

For each method and bit width: calibrate once (each method's own calibration set: PTQ4DiT 25 timesteps x 32
samples, the others 100 x 16, all from the FP sampler with a calibration seed different from the evaluation seed),
export the ONNX set (its size is the artifact size: group graphs + shared weights.bin), then evaluate at every
step count against the FP run of the same seeds and noise (``bench.quality``): mean/min per-step SQNR of the model
output (teacher-forced on the FP trajectory), final-image PSNR vs FP, class accuracy and Fréchet distance from the
digits classifier (demo model only; FP's own values are the floor row). Quality runs on the torch fake-quant
backend (exact Q/DQ arithmetic); every cell also checks ONNX Runtime's exact-QDQ graphs against it on one FP
trajectory input per group, and one cell is evaluated end to end on ONNX Runtime as well.
Peer rows: NVIDIA Model Optimizer (``nvidia-modelopt``, optional) quantizing the same Linear layers with its INT8
max and SmoothQuant configs and INT4-weight (max, AWQ-lite) configs with INT8 activations, same data and metrics.
Writes ``quality.md``, ``quality.csv``, ``quality.json`` and plots (``samples_w4a8.png``; with matplotlib,
``sqnr_over_timesteps.png``).
"""

from __future__ import annotations

import copy
import csv
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ditq.errors import DitqError

log = logging.getLogger(__name__)

METHOD_ORDER = ("minmax", "smoothquant", "ptq4dit", "htg", "qdit", "viditq")
BITS = {"W8A8": 8, "W4A8": 4}  # weight bits; activations are 8-bit throughout
DEFAULT_CALIB_STEPS, DEFAULT_CALIB_SAMPLES = 100, 16
TINY = "tiny"  # model name: a seeded tiny DiT written into the output directory (quick mode, tests)


def parse_method(entry: str) -> tuple[str, dict[str, Any]]:
    """``name`` or ``name:key=value[:key=value...]`` (values as JSON, else strings): a method and its options."""
    name, *items = entry.split(":")
    params: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep:
            raise DitqError(f"method option {item!r} in {entry!r} is not key=value")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        params[key] = tuple(value) if isinstance(value, list) else value
    return name, params


@dataclass(frozen=True)
class QualityConfig:
    model: str = "demo"
    methods: tuple[str, ...] = METHOD_ORDER  # names, or variants "name:key=value[:...]" (qdit:min_mean_group=64)
    bits: tuple[str, ...] = ("W8A8", "W4A8")
    steps: tuple[int, ...] = (100, 50, 25)
    eval_samples: int = 100  # images per cell (the classifier metrics need many)
    sqnr_samples: int = 16  # images whose model calls the per-step SQNR is teacher-forced on
    w4_block: int = 0  # W4A8 weight block (0: per output channel)
    calib_steps: int | None = None  # None: each method's own (ptq4dit: 25), else 100
    calib_samples: int | None = None  # None: each method's own (ptq4dit: 32), else 16
    calib_seed: int = 1  # != seed: calibration never sees the evaluation noise
    seed: int = 0
    cfg_scale: float = 3.0
    method_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    agreement: tuple[str, str] | None = None  # (method, bits) also evaluated on ONNX Runtime; None: htg at W4A8
    peer: bool = True  # Model Optimizer rows when nvidia-modelopt imports
    plots: bool = True
    threads: int | None = None

    def __post_init__(self) -> None:
        from ditq.calibration.methods import METHODS

        if unknown := [m for m in self.methods if parse_method(m)[0] not in METHODS]:
            raise DitqError(f"unknown method {unknown[0]!r}; choose from {', '.join(METHODS)}")
        if bad := [b for b in self.bits if b not in BITS]:
            raise DitqError(f"unknown bit width {bad[0]!r}; choose W8A8 or W4A8")
        if not self.methods or not self.bits or not self.steps or min(self.steps) < 1:
            raise DitqError("--methods, --bits and --steps must be non-empty (steps >= 1)")
        if self.eval_samples < 1 or self.sqnr_samples < 1:
            raise DitqError(f"--eval-samples must be >= 1, got {self.eval_samples}")
        if self.w4_block not in (0, 32, 64, 128):
            raise DitqError(f"--w-block must be 0, 32, 64 or 128, got {self.w4_block}")


def quick_config(**overrides: Any) -> QualityConfig:
    """A CI smoke run: the tiny model, two methods, both bit widths, one short step count (well under a minute)."""
    base = dict(model=TINY, methods=("minmax", "htg"), steps=(5,), eval_samples=6, sqnr_samples=2,
                calib_steps=6, calib_samples=2, peer=False, method_params={"htg": {"groups": 2}})
    return QualityConfig(**{**base, **overrides})


# -- the grid ------------------------------------------------------------------------------------------------------

def run_quality_grid(out: Path, config: QualityConfig = QualityConfig(), *, force: bool = False,
                     progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the grid; write everything into ``out`` (all-or-nothing); returns the ``quality.json`` body."""
    from ditq.outputs import staging_dir

    say = progress or (lambda msg: log.info("%s", msg))
    threads = torch.get_num_threads()
    if config.threads:
        torch.set_num_threads(config.threads)
    try:
        with staging_dir(Path(out), kind="ditq.bench.quality", force=force,
                         inputs=[] if config.model in ("demo", TINY) else [config.model]) as tmp:
            result, grid_rows = _run(tmp, config, say)
            result["output"] = str(out)
            if config.plots:
                result["plots"] = write_plots(result, tmp, grid_rows)
            write_results(result, tmp)
    finally:
        torch.set_num_threads(threads)
    return result


def _load(config: QualityConfig, root: Path) -> Any:
    from ditq.models.dit import load_model

    if config.model == TINY:
        from ditq.models.tiny import save_tiny_model_dir

        return load_model(save_tiny_model_dir(root / "model"))
    return load_model(config.model)


def _scorer(model: Any, say: Callable[[str], None]) -> tuple[Any, str]:
    """The digits classifier, for digits models only: the demo DiT or ``train-demo --arch pixart`` (16x16x1 images,
    10 conditions; it knows nothing else)."""
    from ditq.bench.quality import ImageScorer

    if tuple(model.sample_shape) != (1, 16, 16) or model.num_conditions != 10:
        return None, "class accuracy and Fréchet distance need the demo model's digits classifier: not computed"
    try:
        return ImageScorer(), ""
    except (DitqError, OSError) as err:
        say(f"no digits classifier ({err}); class accuracy and Fréchet distance are skipped")
        return None, f"the digits classifier could not be loaded ({err}): class metrics not computed"


def _run(root: Path, config: QualityConfig, say: Callable[[str], None]
         ) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The grid's measurements, and the W4A8 sample images per method for the plot."""
    from ditq.bench.quality import SamplingSpec, evaluate, fp_reference
    from ditq.calibration.calibrate import CalibConfig, calibrate
    from ditq.calibration.methods import METHODS, method_config
    from ditq.export.onnx_export import export_onnx, export_reference
    from ditq.runtime.backends import onnxruntime_backend, torch_backend

    started = time.perf_counter()
    model = _load(config, root)
    scorer, scorer_note = _scorer(model, say)
    labels = torch.arange(config.eval_samples) % model.num_conditions
    specs = {s: SamplingSpec(steps=s, cfg_scale=config.cfg_scale, seed=config.seed) for s in config.steps}
    refs, fp_rows = {}, []
    for s in config.steps:
        say(f"FP reference, {s} steps")
        refs[s] = fp_reference(model, labels, specs[s])
        fp_rows.append({"method": "fp", "bits": "FP32", "steps": s, **(scorer.score(refs[s].images, labels)
                                                                       if scorer else {})})
    say("exporting the FP reference graph (shared by every ONNX set)")
    reference = export_reference(model)
    cells: list[dict[str, Any]] = []
    recipes: dict[str, Any] = {}
    agreement_key = config.agreement or ("htg", "W4A8")
    agreement: dict[str, Any] = {}
    top = max(config.steps)
    grid_rows: dict[str, torch.Tensor] = {"fp": refs[top].images[:20]}
    for method in config.methods:
        name, variant = parse_method(method)
        own = METHODS[name].calibration_defaults
        calib = CalibConfig(steps=config.calib_steps or own.get("steps", DEFAULT_CALIB_STEPS),
                            samples=config.calib_samples or own.get("samples", DEFAULT_CALIB_SAMPLES),
                            cfg_scale=config.cfg_scale, seed=config.calib_seed, progress=False)
        for bits in config.bits:
            key = f"{method}-{bits}"
            folder = "".join(c if c.isalnum() or c in "-_." else "_" for c in key)
            w_bits = BITS[bits]
            say(f"{key}: calibrating ({calib.steps} steps x {calib.samples} samples)")
            params = {**config.method_params.get(name, {}), **variant}
            recipe = calibrate(model, method_config(name, **params),
                               CalibConfig(**{**asdict(calib), "w_bits": w_bits,
                                              "w_block": config.w4_block if w_bits == 4 else 0}))
            recipe.write(root / "recipes" / folder)
            say(f"{key}: exporting")
            art = export_onnx(model, recipe, root / "onnx" / folder, recipe_dir=root / "recipes" / folder,
                              progress=False, reference=reference)
            size = artifact_bytes(art)
            backend = torch_backend(model, recipe)
            ort = onnxruntime_backend(art, fuse=False)
            consistency = _ort_vs_torch(refs[min(config.steps)], backend, ort, recipe)
            recipes[key] = _recipe_summary(recipe, size, consistency)
            for s in config.steps:
                say(f"{key}: evaluating at {s} steps")
                q = evaluate(model, backend, refs[s], specs[s], scorer, sqnr_rows=config.sqnr_samples)
                images = q.pop("images")
                if bits == "W4A8" and s == top:
                    grid_rows[method] = images[:20]
                cells.append({"method": method, "bits": bits, "steps": s, "backend": "torch", **_cell(q),
                              "groups": recipe.num_groups, "dynamic": recipe.dynamic_activations,
                              "calibration_seconds": recipe.calibration["seconds"], "artifact_bytes": size,
                              "ort_vs_torch_sqnr_db": consistency})
            if (method, bits) == tuple(agreement_key):
                s = min(config.steps)
                say(f"{key}: evaluating at {s} steps on ONNX Runtime (exact Q/DQ) as well")
                q = evaluate(model, ort, refs[s], specs[s], scorer, sqnr_rows=config.sqnr_samples)
                q.pop("images")
                torch_cell = next(c for c in cells if (c["method"], c["bits"], c["steps"]) == (method, bits, s))
                agreement = {"method": method, "bits": bits, "steps": s, "onnxruntime": _cell(q),
                             "torch": {k: torch_cell[k] for k in _cell(q)}}
    peers, peer_note = _peers(model, config, refs, specs, scorer, say)
    return {
        "kind": "ditq.bench.quality", "config": _jsonable(asdict(config)),
        "model": {"source": "tiny (seeded, saved in model/)" if config.model == TINY else model.source,
                  "sha256": model.sha256,
                  "parameters": sum(p.numel() for p in model.transformer.parameters()),
                  "sample_shape": list(model.sample_shape)},
        "sampling": {"scheduler": model.scheduler_config.get("_class_name", "DDPMScheduler"),
                     "cfg_scale": config.cfg_scale, "seed": config.seed, "images": config.eval_samples,
                     "sqnr_images": min(config.sqnr_samples, config.eval_samples)},
        "scorer_note": scorer_note, "fp": fp_rows, "cells": cells, "recipes": recipes, "agreement": agreement,
        "peers": peers, "peer_note": peer_note, "seconds": round(time.perf_counter() - started, 1),
    }, grid_rows


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


def _cell(q: dict[str, Any]) -> dict[str, Any]:
    keys = ("sqnr_mean_db", "sqnr_min_db", "psnr_db", "class_accuracy", "frechet_distance")
    out = {k: q[k] for k in keys if k in q}
    out["sqnr_per_step_db"] = q["sqnr_per_step_db"]
    out["timesteps"] = q["timesteps"]
    return out


@torch.no_grad()
def _ort_vs_torch(ref: Any, backend: Any, ort: Any, recipe: Any) -> float:
    """Min over groups of the SQNR (dB) between ONNX Runtime's exact-QDQ output and the torch fake-quant output,
    on one FP-trajectory input per group (the first 8 images and their CFG twins)."""
    from ditq.bench.quality import _cfg_rows, sqnr_db
    from ditq.models.conditioning import select

    worst = math.inf
    for g in recipe.groups:
        inside = [inp for inp in ref.inputs if g.interval[0] <= float(inp[1][0]) <= g.interval[1]]
        if not inside:
            continue
        inp = inside[len(inside) // 2]
        idx = _cfg_rows(inp[0].shape[0], 8)
        x, t, y = inp[0][idx], inp[1][idx], select(inp[2], idx)
        worst = min(worst, sqnr_db(ort(x, t, y), backend(x, t, y)))
    return worst


def _recipe_summary(recipe: Any, size: int, consistency: float) -> dict[str, Any]:
    specs = [recipe.linear_spec(lin) for s in recipe.sites for lin in s.linears]
    return {"groups": [list(g.interval) for g in recipe.groups], "dynamic_activations": recipe.dynamic_activations,
            "weight_bits": sorted({s.w_bits for s in specs}), "calibration": recipe.calibration,
            "alphas": {s.name: s.alpha for s in recipe.sites}, "artifact_bytes": size,
            "ort_vs_torch_sqnr_db": consistency}


def _jsonable(body: Any) -> Any:
    return json.loads(json.dumps(body, default=lambda o: list(o) if isinstance(o, tuple) else str(o)))


# -- Model Optimizer peer rows -------------------------------------------------------------------------------------

PEER_CONFIGS = ("int8-max", "int8-smoothquant", "w4a8-max", "w4a8-awq-lite")


def modelopt_config(linears: list[str], kind: str, w4_block: int = 0) -> dict[str, Any]:
    """A Model Optimizer quantize config touching only ``linears``: INT8 per-tensor inputs, and INT8 per-channel
    (``int8-*``) or INT4 per-channel / block (``w4a8-*``) weights; algorithm max, SmoothQuant or AWQ-lite."""
    w_bits = 4 if kind.startswith("w4a8") else 8
    weight: dict[str, Any] = {"num_bits": w_bits, "axis": 0}
    if w_bits == 4 and w4_block:
        weight = {"num_bits": 4, "block_sizes": {-1: w4_block, "type": "static"}}
    quant_cfg: list[dict[str, Any]] = [{"quantizer_name": "*", "enable": False}]
    for lin in linears:
        quant_cfg += [{"quantizer_name": f"*{lin}.weight_quantizer", "cfg": dict(weight)},
                      {"quantizer_name": f"*{lin}.input_quantizer", "cfg": {"num_bits": 8, "axis": None}}]
    algorithm: Any = {"int8-max": "max", "w4a8-max": "max", "int8-smoothquant": {"method": "smoothquant",
                                                                                  "alpha": 0.5},
                      "w4a8-awq-lite": "awq_lite"}[kind]
    return {"quant_cfg": quant_cfg, "algorithm": algorithm}


def _peers(model: Any, config: QualityConfig, refs: dict[int, Any], specs: dict[int, Any], scorer: Any,
           say: Callable[[str], None]) -> tuple[list[dict[str, Any]], str]:
    from ditq._deps import has_module

    if not config.peer:
        return [], "Model Optimizer peer rows: not asked for"
    if not has_module("modelopt.torch.quantization"):
        return [], ("Model Optimizer peer rows skipped: nvidia-modelopt is not installed "
                    "(pip install 'ditq[peer]' -c constraints.txt)")
    import modelopt.torch.quantization as mtq

    from ditq.bench.quality import evaluate
    from ditq.calibration.calibrate import CalibConfig
    from ditq.models.dit import quant_sites
    from ditq.runtime.sampler import make_scheduler, sample

    linears = [lin for s in quant_sites(model.transformer) for lin in s.linears]
    calib = CalibConfig(steps=config.calib_steps or DEFAULT_CALIB_STEPS,
                        samples=config.calib_samples or DEFAULT_CALIB_SAMPLES, seed=config.calib_seed)
    rows = []
    for kind in PEER_CONFIGS:
        bits = "W4A8" if kind.startswith("w4a8") else "W8A8"
        if bits not in config.bits:
            continue
        say(f"modelopt {kind}: calibrating")
        start = time.perf_counter()
        den = copy.deepcopy(model.denoiser())

        def loop(m: torch.nn.Module) -> None:
            sample(m, make_scheduler(model.scheduler_config), model.cond(torch.arange(calib.samples) %
                                                                          model.num_conditions),
                   steps=calib.steps, cfg_scale=config.cfg_scale, null_cond=model.null_cond(),
                   sample_shape=model.sample_shape, seed=calib.seed)

        with torch.no_grad():
            den = mtq.quantize(den, modelopt_config(linears, kind, config.w4_block), loop)
        seconds = round(time.perf_counter() - start, 1)
        for s in config.steps:
            say(f"modelopt {kind}: evaluating at {s} steps")
            q = evaluate(model, den, refs[s], specs[s], scorer, sqnr_rows=config.sqnr_samples)
            q.pop("images")
            rows.append({"method": f"modelopt {kind}", "bits": bits, "steps": s, "backend": "torch (modelopt)",
                         **_cell(q), "groups": 1, "dynamic": False, "calibration_seconds": seconds})
    import modelopt

    return rows, (f"Model Optimizer {modelopt.__version__} (`mtq.quantize`, fake quantization in torch, same Linear "
                  f"layers, calibration data {calib.steps} steps x {calib.samples} samples)")


# -- files ---------------------------------------------------------------------------------------------------------

COLUMNS = ("method", "bits", "steps", "groups", "sqnr_mean_db", "sqnr_min_db", "psnr_db", "class_accuracy",
           "frechet_distance", "calibration_seconds", "artifact_bytes", "ort_vs_torch_sqnr_db", "dynamic", "backend")


def all_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """FP floor rows first, then every cell and peer row, ordered by bits, steps and method."""
    order = {m: i for i, m in enumerate(METHOD_ORDER)}
    rows = [{**r, "backend": "torch"} for r in result["fp"]]
    rows += sorted(result["cells"] + result["peers"],
                   key=lambda r: (r["bits"] != "W8A8", -r["steps"], order.get(r["method"].split(":")[0], 99),
                                  r["method"]))
    return rows


def _fmt(v: Any, digits: int = 2) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, float):
        return "inf" if math.isinf(v) else f"{v:.{digits}f}"
    return str(v)


def format_markdown(result: dict[str, Any]) -> str:
    cfg, m, smp = result["config"], result["model"], result["sampling"]
    w4 = "per output channel" if not cfg["w4_block"] else f"in blocks of {cfg['w4_block']}"
    lines = [
        "# ditq bench quality", "",
        f"Model `{m['source']}` ({m['parameters']:,} parameters, sha256 {m['sha256'][:12]}), {smp['scheduler']} "
        f"with CFG {smp['cfg_scale']}, {smp['images']} images per cell (seed {smp['seed']}, the FP run's noise), "
        f"per-step SQNR teacher-forced on {smp['sqnr_images']} of them. W8A8: INT8 per-channel weights; W4A8: INT4 "
        f"weights {w4} (Q-DiT: its "
        "own searched groups); activations INT8 (static per tensor for minmax/smoothquant/ptq4dit/htg, dynamic for "
        "qdit/viditq). Quality on the torch fake-quant backend (exact Q/DQ arithmetic).", "",
        "| method | bits | steps | groups | mean step SQNR (dB) | min step SQNR (dB) | PSNR vs FP (dB) | class acc. "
        "| Fréchet dist. | calib. (s) | artifact (MB) | ORT vs torch (dB) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in all_rows(result):
        name = "FP32 (floor)" if r["method"] == "fp" else r["method"] + (" (dyn.)" if r.get("dynamic") else "")
        size = r.get("artifact_bytes")
        lines.append(
            f"| {name} | {r['bits']} | {r['steps']} | {_fmt(r.get('groups'))} | {_fmt(r.get('sqnr_mean_db'))} | "
            f"{_fmt(r.get('sqnr_min_db'))} | {_fmt(r.get('psnr_db'))} | {_fmt(r.get('class_accuracy'), 3)} | "
            f"{_fmt(r.get('frechet_distance'), 3)} | {_fmt(r.get('calibration_seconds'), 1)} | "
            f"{_fmt(size / 2**20 if size else None, 3)} | {_fmt(r.get('ort_vs_torch_sqnr_db'), 1)} |")
    notes = ["", "Notes:", "",
             "- `ORT vs torch`: the SQNR between ONNX Runtime's exact-QDQ graphs and the torch fake-quant backend "
             "(worst group, one FP-trajectory input each). Both compute the same Q/DQ arithmetic; what remains is "
             "float rounding order (ONNX Runtime's kernels vs torch), which now and then moves a value across a "
             "rounding boundary, i.e. by one quantization step: tens of dB above the quantization noise itself.",
             "- `artifact`: the group graphs plus the `weights.bin` ranges they reference (the FP reference graph's "
             "own weights excluded): what a deployment ships.",
             "- `(dyn.)`: dynamic activation quantization (Q-DiT, ViDiT-Q): runs on ONNX Runtime and torch, not as "
             "TensorRT INT8 engines.",
             "- TensorRT runs W4A8 as INT4-weight dequantization + FP16 GEMMs (a memory win, not a compute win).",
             f"- {result['peer_note']}."]
    if result.get("scorer_note"):
        notes.append(f"- {result['scorer_note']}.")
    ag = result.get("agreement")
    if ag:
        o, t = ag["onnxruntime"], ag["torch"]
        notes.append(f"- End-to-end check, {ag['method']} {ag['bits']} at {ag['steps']} steps: ONNX Runtime "
                     f"(exact QDQ) mean step SQNR {_fmt(o['sqnr_mean_db'])} dB, PSNR {_fmt(o['psnr_db'])} dB, class "
                     f"acc. {_fmt(o.get('class_accuracy'), 3)}; torch {_fmt(t['sqnr_mean_db'])} dB, "
                     f"{_fmt(t['psnr_db'])} dB, {_fmt(t.get('class_accuracy'), 3)}.")
    notes += ["", "Recipes:", ""]
    for key, r in result["recipes"].items():
        info = r["calibration"].get("method", {})
        extra = ""
        if "group_sizes" in info:
            extra = (f"; group sizes mean {info['mean_group_size']:.0f} "
                     f"(≥ {info['constraint_mean_group_at_least']:.0f}), {info['evaluations']} candidates, "
                     f"best fitness {info['best_fitness_db']} dB")
        if "w8_sites" in info:
            extra = f"; 8-bit weight sites {len(info['w8_sites'])}, mean weight bits {info['mean_weight_bits']}"
        alphas = sorted({a for a in r["alphas"].values() if a is not None})
        notes.append(f"- {key}: calibration {r['calibration']['steps']} steps x {r['calibration']['samples']} "
                     f"samples, {len(r['groups'])} group(s) {r['groups'] if len(r['groups']) > 1 else ''}, "
                     f"alphas {alphas or '–'}{extra}.")
    for name in result.get("plots", {}).get("files", []):
        notes.append(f"- plot: `{name}`")
    if result.get("plots", {}).get("note"):
        notes.append(f"- {result['plots']['note']}")
    notes += ["", f"Total {result['seconds']} s.", ""]
    return "\n".join(lines + notes)


def write_results(result: dict[str, Any], out: Path) -> None:
    from ditq.artifacts import write_json

    write_json(out / "quality.json", _jsonable(result))
    (out / "quality.md").write_text(format_markdown(result))
    with open(out / "quality.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in all_rows(result):
            w.writerow({k: r.get(k, "") for k in COLUMNS})


def write_plots(result: dict[str, Any], out: Path, grid_rows: dict[str, torch.Tensor] | None) -> dict[str, Any]:
    """``samples_w4a8.png`` (PIL; rows FP then each method) and, with matplotlib, ``sqnr_over_timesteps.png``."""
    from ditq._deps import has_module
    from ditq.runtime.images import save_grid

    files, note = [], ""
    if grid_rows and len(grid_rows) > 1:
        save_grid(list(grid_rows.values()), out / "samples_w4a8.png", cols=min(10, grid_rows["fp"].shape[0]))
        files.append("samples_w4a8.png")
        note = f"samples_w4a8.png rows: {', '.join(grid_rows)} (W4A8, {max(result['config']['steps'])} steps)."
    if not has_module("matplotlib"):
        return {"files": files, "note": note + " SQNR plot skipped: matplotlib is not installed "
                "(pip install 'ditq[plot]')."}
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = max(result["config"]["steps"])
    bits_list = result["config"]["bits"]
    fig, axes = plt.subplots(1, len(bits_list), figsize=(6.5 * len(bits_list), 4.2), squeeze=False)
    for ax, bits in zip(axes[0], bits_list):
        for r in result["cells"] + result["peers"]:
            if r["bits"] == bits and r["steps"] == steps:
                ax.plot(r["timesteps"], r["sqnr_per_step_db"], label=r["method"],
                        linestyle="--" if r["method"].startswith("modelopt") else "-")
        htg = result["recipes"].get(f"htg-{bits}")  # the default htg row's groups
        for lo, _hi in (htg["groups"][1:] if htg else []):
            ax.axvline(lo - 0.5, color="grey", linewidth=0.8, linestyle=":")
        ax.set_title(f"{bits}, {steps} steps" + (" (dotted: HTG group boundaries)" if htg else ""))
        ax.set_xlabel("timestep")
        ax.set_ylabel("output SQNR vs FP (dB)")
        ax.invert_xaxis()  # the sampler's direction
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "sqnr_over_timesteps.png", dpi=110)
    plt.close(fig)
    files.append("sqnr_over_timesteps.png")
    return {"files": files, "note": note}


__all__ = ["METHOD_ORDER", "QualityConfig", "modelopt_config", "quick_config", "run_quality_grid"]
