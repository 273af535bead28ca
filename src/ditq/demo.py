"""``ditq demo``: calibrate -> export -> lint -> validate -> sample (FP vs INT8) on the bundled model, one report."""

from __future__ import annotations

import csv
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ditq.artifacts.outputs import staging_dir

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoConfig:
    model: str = "demo"
    steps: int = 100
    samples: int = 16
    eval_samples: int = 50
    sqnr_images: int = 16  # images (with their CFG twins) the per-step SQNR is teacher-forced on
    groups: int | str = "auto"
    # HTG's criterion probes (calibration calls x rows). The library default, 12 x 16, takes the demo DiT's HTG
    # calibration from 76 s to 120 s (idle 2-core Xeon; the whole demo 220 s -> 238 s) for +0.8 dB at 100 steps
    # over 3 seeds; the demo keeps the earlier 6 x 8 (`ditq demo --full-criterion` runs the default)
    probes: tuple[int, int] | None = (6, 8)
    baseline: bool = True
    latency_batch: int = 8
    threads: int = 2
    progress: bool = True


def run_demo(out: Path, config: DemoConfig = DemoConfig(), *, force: bool = False) -> dict[str, Any]:
    from ditq.bench.quality import evaluate
    from ditq.bench.speed import ort_latency_ms
    from ditq.calibration.calibrate import CalibConfig, calibrate
    from ditq.calibration.methods import method_config
    from ditq.export.onnx_export import export_onnx
    from ditq.models.loading import load_model
    from ditq.runtime.backends import onnxruntime_backend
    from ditq.runtime.images import save_grid
    from ditq.testbed.scoring import ImageScorer, SamplingSpec, fp_reference
    from ditq.validation.run import ValidateConfig, validate

    out = Path(out)
    with staging_dir(out, kind="ditq.demo", force=force,
                     inputs=[] if config.model == "demo" else [config.model]) as tmp:
        start = time.perf_counter()
        model = load_model(config.model)
        spec = SamplingSpec(steps=config.steps, cfg_scale=3.0, seed=0)
        labels = torch.arange(config.eval_samples) % model.num_classes
        ref = fp_reference(model, labels, spec)
        scorer = ImageScorer() if config.model == "demo" else None  # the classifier knows only digits
        report: dict[str, Any] = {"model": {"source": model.source, "sha256": model.sha256,
                                            "parameters": sum(p.numel() for p in model.transformer.parameters())},
                                  "sampling": {"steps": spec.steps, "cfg_scale": spec.cfg_scale, "seed": spec.seed,
                                               "images": config.eval_samples},
                                  "fp": scorer.score(ref.images, labels) if scorer else {}, "methods": {}}
        grids = [ref.images[:20]]
        methods = ["htg", "minmax"] if config.baseline else ["htg"]
        for name in methods:
            t0 = time.perf_counter()
            params: dict[str, Any] = {"groups": config.groups} if name == "htg" else {}
            if name == "htg" and config.probes is not None:
                params.update(probe_timesteps=config.probes[0], probe_batch=config.probes[1])
            recipe = calibrate(model, method_config(name, **params),
                               CalibConfig(steps=config.steps, samples=config.samples, progress=config.progress))
            recipe.write(tmp / f"recipe-{name}")
            art = export_onnx(model, recipe, tmp / f"onnx-{name}", recipe_dir=tmp / f"recipe-{name}",
                              progress=config.progress)
            val = validate(art, model, recipe, art.root / "validation", ValidateConfig())
            # quality with exact Q/DQ arithmetic (what TensorRT computes); ORT's fused CPU kernels separately
            quality = evaluate(model, onnxruntime_backend(art, threads=config.threads, fuse=False), ref, spec, scorer,
                               sqnr_rows=config.sqnr_images)
            grids.append(quality.pop("images")[:20])
            fused = evaluate(model, onnxruntime_backend(art, threads=config.threads), ref, spec, None,
                             sqnr_rows=config.sqnr_images, sample_images=False)
            lat_fp = ort_latency_ms(art.path(None), model.sample_shape, batch=config.latency_batch,
                                    threads=config.threads)
            lat_q = ort_latency_ms(art.path(0), model.sample_shape, batch=config.latency_batch,
                                   threads=config.threads)
            report["methods"][name] = {
                "calibration_seconds": recipe.calibration["seconds"],
                "groups": [{"id": g.group_id, "interval": list(g.interval), "calibration_timesteps": len(g.timesteps)}
                           for g in recipe.groups],
                "cost_curve": list(recipe.cost_curve),
                "alphas": {s.name: s.alpha for s in recipe.sites},
                "validation": [{"group": g["group"], "interval": g["interval"], "passed": g["passed"],
                                **{f"{k}_sqnr_db": v["sqnr_db"] for k, v in g["metrics"].items()},
                                **{f"{k}_cosine": v["cosine"] for k, v in g["metrics"].items()}}
                               for g in val["groups"]],
                "validation_passed": val["passed"],
                "quality": quality,
                "quality_ort_cpu_integer_kernels": fused,
                "latency": {"fp32_ms": lat_fp["median_ms"], "int8_ms": lat_q["median_ms"],
                            "ratio": lat_q["median_ms"] / lat_fp["median_ms"], "batch": config.latency_batch,
                            "threads": config.threads},
                "pipeline_seconds": round(time.perf_counter() - t0, 1),
            }
        save_grid(grids, tmp / "grid.png", cols=10)
        report["total_seconds"] = round(time.perf_counter() - start, 1)
        (tmp / "report.json").write_text(json.dumps(report, indent=2, default=float) + "\n")
        (tmp / "report.md").write_text(format_markdown(report, methods))
        with open(tmp / "sqnr_per_step.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["step", "timestep", *methods])
            for i, t in enumerate(ref.timesteps):
                w.writerow([i, int(t), *(f"{report['methods'][m]['quality']['sqnr_per_step_db'][i]:.3f}"
                                         for m in methods)])
    return report


def _quality_row(label: str, groups: int, q: dict[str, Any], latency: str) -> str:
    def cell(key: str, digits: int) -> str:  # "–" for a metric the row does not measure (not "nan")
        value = q.get(key)
        return "–" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"

    return (f"| {label} | {groups} | {cell('sqnr_mean_db', 2)} | {cell('sqnr_min_db', 2)} | {cell('psnr_db', 2)} | "
            f"{cell('class_accuracy', 3)} | {cell('frechet_distance', 3)} | {latency} |")


def format_markdown(report: dict[str, Any], methods: list[str]) -> str:
    fp = report["fp"]
    lines = [
        "# ditq demo report", "",
        f"Model: `{report['model']['source']}` ({report['model']['parameters']:,} parameters, sha256 "
        f"{report['model']['sha256'][:12]}). Sampling: DDPM {report['sampling']['steps']} steps, CFG "
        f"{report['sampling']['cfg_scale']}, {report['sampling']['images']} images, seed {report['sampling']['seed']}"
        ", same noise for every variant. W8A8 (INT8 per-channel weights, INT8 per-tensor activations).", "",
        "## Quality vs FP", "",
        "| variant | groups | mean step SQNR (dB) | min step SQNR (dB) | image PSNR vs FP (dB) | class acc. | "
        "Fréchet dist. | ORT INT8/FP32 latency |",
        "|---|---|---|---|---|---|---|---|",
        f"| FP32 | – | – | – | – | {fp.get('class_accuracy', math.nan):.3f} | "
        f"{fp.get('frechet_distance', math.nan):.3f} | 1.00 |",
    ]
    for m in methods:
        r = report["methods"][m]
        lines.append(_quality_row(f"{m} W8A8", len(r["groups"]), r["quality"], f"{r['latency']['ratio']:.2f}"))
    for m in methods:
        r = report["methods"][m]
        lines.append(_quality_row(f"{m} W8A8, ORT CPU integer kernels", len(r["groups"]),
                                  r["quality_ort_cpu_integer_kernels"], ""))
    lines += ["", "SQNR and PSNR are against the FP model (same seeds and noise); per-step SQNR is teacher-forced "
              "on the FP trajectory. Rows without a backend note run the exported QDQ graphs with exact Q/DQ "
              "arithmetic (ONNX Runtime, no integer-kernel fusion): the numerics TensorRT and the torch reference "
              "share. The integer-kernel rows (per-step SQNR only) are ONNX Runtime's fused CPU path, which on "
              "x86 CPUs without VNNI can saturate int16 partial "
              "sums with full-range INT8 weights."]
    for m in methods:
        r = report["methods"][m]
        lines += ["", f"## {m}: groups and validation", "",
                  f"Calibration: {r['calibration_seconds']:.1f} s. Latency at batch {r['latency']['batch']}, "
                  f"{r['latency']['threads']} threads: FP32 {r['latency']['fp32_ms']:.2f} ms, INT8 "
                  f"{r['latency']['int8_ms']:.2f} ms.", "",
                  "| group | timestep interval | ORT FP SQNR (dB) | ORT QDQ SQNR (dB) | QDQ cosine | "
                  "torch fake-quant SQNR (dB) | ORT integer-kernel SQNR (dB) | passed |",
                  "|---|---|---|---|---|---|---|---|"]
        for v in r["validation"]:
            lines.append(f"| {v['group']} | {v['interval'][0]}–{v['interval'][1]} | {v['onnxrt-fp_sqnr_db']:.1f} | "
                         f"{v['onnxrt-qdq_sqnr_db']:.2f} | {v['onnxrt-qdq_cosine']:.5f} | "
                         f"{v.get('torch-fakequant_sqnr_db', math.nan):.2f} | "
                         f"{v.get('onnxrt-qdq-fused_sqnr_db', math.nan):.2f} | {v['passed']} |")
    lines += ["", "The demo's exit status gates on HTG's validation; the min-max baseline's verdict is reported only. "
              "Files: `grid.png` (rows: FP, then each method; two images per class), `sqnr_per_step.csv`, "
              "`report.json`, `recipe-*/`, `onnx-*/` (with `validation/`).", ""]
    return "\n".join(lines)
