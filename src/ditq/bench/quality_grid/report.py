"""``quality.md``, ``quality.csv`` and ``quality.json``: the rows in table order, the markdown table and notes."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

from ditq.bench.quality_grid.config import BITS, FORMATS, METHOD_ORDER
from ditq.bench.quality_grid.seeds import SEED_METRICS

BIT_ORDER = {b: i for i, b in enumerate(BITS)}  # W8A8, then W8A8-FP8 beside it, then W4A8

COLUMNS = ("method", "bits", "steps", "groups", "sqnr_mean_db", "sqnr_min_db", "psnr_global_db", "psnr_db",
           "class_accuracy", "frechet_distance", "calibration_seconds", "artifact_bytes", "ort_vs_torch_sqnr_db",
           "ort_vs_torch_margin_db",
           "dynamic", "backend", "calib_seed")
# with several calibration seeds the rows are the means over seeds, and these columns add their spread
SEED_COLUMNS = ("calib_seeds", *(f"{k}_{end}" for k in SEED_METRICS for end in ("min", "max")))


def cell_metrics(q: dict[str, Any]) -> dict[str, Any]:
    keys = ("sqnr_mean_db", "sqnr_min_db", "psnr_global_db", "psnr_db", "psnr_per_image_db", "class_accuracy",
            "frechet_distance")
    out = {k: q[k] for k in keys if k in q}
    out["sqnr_per_step_db"] = q["sqnr_per_step_db"]
    out["timesteps"] = q["timesteps"]
    return out


def jsonable(body: Any) -> Any:
    return json.loads(json.dumps(body, default=lambda o: list(o) if isinstance(o, tuple) else str(o)))


def all_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """FP floor rows first, then every cell and peer row (with several calibration seeds: their mean-and-spread
    rows, ``result["summary"]``), ordered by bits, steps and method."""
    order = {m: i for i, m in enumerate(METHOD_ORDER)}
    rows = [{**r, "backend": "torch"} for r in result["fp"]]
    rows += sorted(result.get("summary") or result["cells"] + result["peers"],
                   key=lambda r: (BIT_ORDER.get(r["bits"], 9), -r["steps"], order.get(r["method"].split(":")[0], 99),
                                  r["method"]))
    return rows


def _agreement(r: dict[str, Any]) -> str:
    """The ORT vs torch cell: the SQNR and, where measured, its margin over the quantization error."""
    sqnr, margin = r.get("ort_vs_torch_sqnr_db"), r.get("ort_vs_torch_margin_db")
    return _fmt(sqnr, 1) if margin is None or sqnr is None else f"{sqnr:.1f} ({margin:+.1f})"


def _fmt(v: Any, digits: int = 2) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, float):
        return "inf" if math.isinf(v) else f"{v:.{digits}f}"
    return str(v)


def _spread(r: dict[str, Any], key: str) -> str:
    """``mean (min–max)`` of a metric over calibration seeds, or the one value."""
    if f"{key}_min" not in r or len(r.get("calib_seeds", ())) < 2:
        return _fmt(r.get(key))
    return f"{_fmt(r.get(key))} ({_fmt(r[key + '_min'])}–{_fmt(r[key + '_max'])})"


def format_markdown(result: dict[str, Any]) -> str:
    cfg, m, smp = result["config"], result["model"], result["sampling"]
    seeds = result.get("calib_seeds") or [cfg["calib_seed"]]
    seed_note = (f"Every quantized row is the mean over calibration seeds {', '.join(map(str, seeds))} (each "
                 "calibrated and evaluated separately), min–max in parentheses; per-seed values in quality.json "
                 "`cells` / `peers`." if len(seeds) > 1 else f"Calibration seed {seeds[0]}.")
    w4 = "per output channel" if not cfg["w4_block"] else f"in blocks of {cfg['w4_block']}"
    lines = [
        "# ditq bench quality", "",
        f"Model `{m['source']}` ({m['parameters']:,} parameters, sha256 {m['sha256'][:12]}), {smp['scheduler']} "
        f"with CFG {smp['cfg_scale']}, {smp['images']} images per cell (seed {smp['seed']}, the FP run's noise), "
        f"per-step SQNR teacher-forced on {smp['sqnr_images']} of them. W8A8: INT8 per-channel weights; W8A8-FP8: "
        "FP8 E4M3 per-channel weights and per-tensor per-group E4M3 activations (static methods only); W4A8: INT4 "
        f"weights {w4} (Q-DiT: its "
        "own searched groups); activations INT8 (static per tensor for minmax/smoothquant/ptq4dit/htg, dynamic for "
        "qdit/viditq). Quality on the torch fake-quant backend (exact Q/DQ arithmetic). PSNR vs FP: global pools "
        f"the MSE over all images, mean averages the per-image PSNR. {seed_note}", "",
        "| method | bits | steps | groups | mean step SQNR (dB) | min step SQNR (dB) | PSNR global (dB) "
        "| PSNR mean (dB) | class acc. | Fréchet dist. | calib. (s) | artifact (MB) | ORT vs torch (dB) (margin) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in all_rows(result):
        name = "FP32 (floor)" if r["method"] == "fp" else r["method"] + (" (dyn.)" if r.get("dynamic") else "")
        size = r.get("artifact_bytes")
        lines.append(
            f"| {name} | {r['bits']} | {r['steps']} | {_fmt(r.get('groups'))} | {_spread(r, 'sqnr_mean_db')} | "
            f"{_fmt(r.get('sqnr_min_db'))} | {_spread(r, 'psnr_global_db')} | {_spread(r, 'psnr_db')} | "
            f"{_fmt(r.get('class_accuracy'), 3)} | "
            f"{_fmt(r.get('frechet_distance'), 3)} | {_fmt(r.get('calibration_seconds'), 1)} | "
            f"{_fmt(size / 2**20 if size else None, 3)} | {_agreement(r)} |")
    paired = result.get("paired") or []
    if paired:
        lines += ["", "HTG minus the best one-scale static peer (ditq smoothquant or a Model Optimizer row, the "
                  "highest mean global PSNR), paired over images (same noise; each image's PSNR averaged over "
                  f"the calibration seeds), 95 % bootstrap interval ({paired[0]['bootstrap']['resamples']} "
                  f"resamples, rng seed {paired[0]['bootstrap']['rng_seed']}):", "",
                  "| HTG | bits | steps | vs peer | Δ PSNR global (dB) [95 % CI] | Δ PSNR mean (dB) [95 % CI] |",
                  "|---|---|---|---|---|---|"]
        for p in paired:
            g, mn = p["psnr_global_db_diff_ci95"], p["psnr_db_diff_ci95"]
            lines.append(f"| {p['method']} | {p['bits']} | {p['steps']} | {p['peer']} | "
                         f"{p['psnr_global_db_diff']:+.2f} [{g[0]:+.2f}, {g[1]:+.2f}] | "
                         f"{p['psnr_db_diff']:+.2f} [{mn[0]:+.2f}, {mn[1]:+.2f}] |")
    notes = ["", "Notes:", "",
             "- `ORT vs torch`: the SQNR between ONNX Runtime's exact-QDQ graphs and the torch fake-quant backend "
             "(worst group, one FP-trajectory input each). Both compute the same Q/DQ arithmetic; what remains is "
             "float rounding order (ONNX Runtime's kernels vs torch), which now and then moves a value across a "
             "rounding boundary, i.e. by one quantization step. `(margin)`: the worst group's distance above the "
             "quantization error at the same input (that SQNR minus the torch output's SQNR vs FP). The SQNR is "
             "lowest in a narrow group near t = 0, where the quantization error itself is largest (the min step "
             "SQNR column); the margin reads the same for every group and should stay well above 0.",
             "- `artifact`: the group graphs plus the `weights.bin` ranges they reference (the FP reference graph's "
             "own weights excluded): what a deployment ships.",
             "- `(dyn.)`: activation scales computed at run time. ViDiT-Q's per-token scales export as TensorRT's "
             "explicit form (constant-scale Q/DQ, GEMM rows rescaled; not built here); Q-DiT's per-channel-group "
             "scales run on ONNX Runtime and torch only.",
             "- TensorRT runs W4A8 as INT4-weight dequantization + FP16 GEMMs (a memory win, not a compute win).",
             f"- {result['peer_note']}."]
    if any(r["bits"] == "W4A16" for r in result["cells"]):
        notes.append("- W4A16: the W4A8 recipe exported as TensorRT builds INT4 (`export --target tensorrt`: INT4 "
                     "weight dequantization only, activations stay FP16/FP32); W4A8 is the papers' fake-quant setting.")
    if any(r["bits"] in FORMATS for r in result["cells"]):
        notes.append("- W8A8-FP8 (E4M3, scale = amax / 448, saturating) is TensorRT's FP8 path on Ada/Hopper "
                     "(sm_89+); ONNX Runtime runs its FLOAT8E4M3FN Q/DQ exactly on CPU.")
    if result.get("skipped"):
        notes.append(f"- not run: {', '.join(result['skipped'])} (dynamic activations have no FP8 form in ditq).")
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

    write_json(out / "quality.json", jsonable(result))
    (out / "quality.md").write_text(format_markdown(result))
    with open(out / "quality.csv", "w", newline="") as fh:
        columns = COLUMNS + (SEED_COLUMNS if result.get("summary") else ())
        w = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        for r in all_rows(result):
            w.writerow({k: " ".join(map(str, r[k])) if isinstance(r.get(k), list) else r.get(k, "")
                        for k in columns})
