"""``ditq bench fullsize``: published full-size architectures (random weights) through the whole pipeline.

Each model runs in its own process (so peak memory is its own): build from the published config with seeded
random weights (PixArt: a random caption table) -> calibrate (HTG) -> export (FP32 ONNX with external data: the
models are above protobuf's 2 GB) -> lint -> validate (Polygraphy, ONNX Runtime vs torch golden, per group).
Per stage: wall seconds and peak resident memory (Linux VmHWM, reset between stages). Small sample counts:
the point is that the pipeline scales and what it costs, not the quality of a random model.

The children run with glibc's mmap threshold fixed at 1 MiB (``MALLOC_MMAP_THRESHOLD_``, unless the caller set
it): by default glibc raises the threshold to the largest block freed (up to 32 MiB), so tensors up to that size
come from its heaps, whose freed space stays resident. On PixArt-alpha-1024's Fisher passes that was 15.9 GB of
peak RSS against 9.3 GB with the fixed threshold (scripts/probes/fisher_memory.py), at 8 % more time.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from ditq.errors import DitqError

MMAP_THRESHOLD_ENV = "MALLOC_MMAP_THRESHOLD_"  # glibc; other C libraries ignore it
MMAP_THRESHOLD = 1 << 20
FULLSIZE_MODELS = ("dit-xl2-256", "dit-xl2-512", "pixart-alpha-512", "pixart-alpha-1024")


@dataclass(frozen=True)
class FullsizeConfig:
    models: tuple[str, ...] = FULLSIZE_MODELS
    calib_steps: int = 4
    calib_samples: int = 1
    groups: int = 2
    validate_steps: int = 2
    threads: int = 2
    keep_artifacts: bool = False


def _rss_peak_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def _reset_peak() -> None:
    """Reset VmHWM (Linux); elsewhere the peak stays cumulative over the process."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


@contextmanager
def _stage(record: dict[str, Any], name: str) -> Iterator[None]:
    _reset_peak()
    start = time.perf_counter()
    yield
    record[name] = {"seconds": round(time.perf_counter() - start, 1),
                    "peak_rss_gb": round(_rss_peak_bytes() / 2**30, 2)}
    print(f"  {name}: {record[name]['seconds']} s, peak RSS {record[name]['peak_rss_gb']} GB", flush=True)


def run_one(name: str, config: FullsizeConfig, work: Path) -> dict[str, Any]:
    """The whole pipeline on architecture ``name``, in this process; returns the record."""
    import torch

    from ditq.artifacts.lint import lint_dir
    from ditq.calibration.calibrate import CalibConfig, calibrate
    from ditq.calibration.methods import method_config
    from ditq.export.onnx_export import export_onnx
    from ditq.models.configs import num_params, random_model
    from ditq.validation.run import ValidateConfig, validate

    torch.set_num_threads(config.threads)
    stages: dict[str, Any] = {}
    rec: dict[str, Any] = {"model": name, "stages": stages,
                           "malloc_mmap_threshold": os.environ.get(MMAP_THRESHOLD_ENV)}
    with _stage(stages, "build"), torch.no_grad():
        model = random_model(name)
    rec.update(parameters=num_params(model.transformer), fp32_gb=round(num_params(model.transformer) * 4 / 2**30, 2),
               tokens=(model.sample_shape[1] // int(model.config.patch_size)) ** 2, kind=model.kind)
    with _stage(stages, "calibrate"):
        recipe = calibrate(model, method_config("htg", groups=config.groups),
                           CalibConfig(steps=config.calib_steps, samples=config.calib_samples, progress=False))
        recipe.write(work / "recipe")
    rec["groups"] = [list(g.interval) for g in recipe.groups]
    rec["alpha_criterion"] = recipe.calibration.get("method", {}).get("alpha_criterion")
    with _stage(stages, "export"):
        art = export_onnx(model, recipe, work / "onnx", recipe_dir=work / "recipe", progress=False, force=True)
    files = {p.name: p.stat().st_size for p in art.root.iterdir() if p.is_file()}
    rec["artifact"] = {"total_gb": round(sum(files.values()) / 2**30, 2),
                       "weights_bin_gb": round(files.get("weights.bin", 0) / 2**30, 2),
                       "largest_graph_mb": round(max(v for k, v in files.items() if k.endswith(".onnx")) / 2**20, 2)}
    with _stage(stages, "lint"):
        violations = lint_dir(art.root)
    rec["lint_violations"] = sum(len(v) for v in violations.values())
    with _stage(stages, "validate"):
        report = validate(art, model, recipe, work / "validation",
                          ValidateConfig(steps=config.validate_steps, samples=1, feeds_per_group=1, fused=False))
    rec["validation"] = {"passed": report["passed"], "groups": [
        {"interval": g["interval"], **{k: round(m["sqnr_db"], 2) for k, m in g["metrics"].items()}}
        for g in report["groups"]]}
    return rec


def benchmark_fullsize(config: FullsizeConfig, out: Path, progress: Callable[[str], None] = print, *,
                       force: bool = False) -> dict[str, Any]:
    """Every model in a child process; writes ``fullsize.json`` and ``fullsize.md`` under ``out``.

    ``out`` follows ditq's output rule (``ditq.artifacts.outputs``): it appears whole when the run ends, an existing one
    is replaced only with ``force`` and only if it holds an earlier full-size benchmark.
    """
    from ditq.artifacts.outputs import staging_dir
    from ditq.models.configs import ARCH_CONFIGS

    unknown = [m for m in config.models if m not in ARCH_CONFIGS]
    if unknown:
        raise DitqError(f"unknown architecture {unknown[0]!r}; choose from {', '.join(ARCH_CONFIGS)}")
    with staging_dir(Path(out), kind="ditq.bench.fullsize", force=force) as tmp:
        return _benchmark_fullsize(config, tmp, progress)


def _benchmark_fullsize(config: FullsizeConfig, out: Path, progress: Callable[[str], None]) -> dict[str, Any]:
    env = {**os.environ, MMAP_THRESHOLD_ENV: os.environ.get(MMAP_THRESHOLD_ENV, str(MMAP_THRESHOLD))}
    results: dict[str, Any] = {"config": asdict(config), "models": []}
    for name in config.models:
        progress(f"{name}: calibrate -> export -> lint -> validate")
        work = out / "artifacts" / name
        work.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run([sys.executable, "-m", "ditq.bench.fullsize", name, json.dumps(asdict(config)),
                               str(work)], capture_output=False, stdout=None, stderr=subprocess.PIPE, text=True,
                              env=env)
        rec_path = work / "record.json"
        if proc.returncode == 0 and rec_path.is_file():
            rec = json.loads(rec_path.read_text())
        else:
            rec = {"model": name, "error": (proc.stderr.strip().splitlines() or ["?"])[-1],
                   "returncode": proc.returncode}
        results["models"].append(rec)
        (out / "fullsize.json").write_text(json.dumps(results, indent=2) + "\n")
        (out / "fullsize.md").write_text(format_markdown(results))
        if not config.keep_artifacts:
            import shutil

            for sub in ("onnx", "recipe", "validation"):
                shutil.rmtree(work / sub, ignore_errors=True)
    return results


def format_markdown(results: dict[str, Any]) -> str:
    c = results["config"]
    lines = ["# Full-size architectures (random weights): calibrate -> export -> lint -> validate\n",
             f"HTG, {c['groups']} groups, calibration {c['calib_steps']} steps x {c['calib_samples']} sample(s) "
             f"(CFG batch 2); validation {c['validate_steps']} steps, 1 feed per group; {c['threads']} threads.\n",
             "| model | params | tokens | FP32 GB | calibrate s / GB (alpha criterion) | export s / GB | ONNX set GB | "
             "lint | validate s / GB | QDQ vs golden SQNR per group (dB) | passed |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results["models"]:
        if "error" in r:
            lines.append(f"| {r['model']} | failed: {r['error']} |||||||||| |")
            continue
        s = r["stages"]
        sq = ", ".join(f"{g.get('onnxrt-qdq', float('nan')):.1f}" for g in r["validation"]["groups"])
        lines.append(
            f"| {r['model']} | {r['parameters'] / 1e6:.0f}M | {r['tokens']} | {r['fp32_gb']} | "
            f"{s['calibrate']['seconds']} / {s['calibrate']['peak_rss_gb']}"
            f"{' (' + r['alpha_criterion'] + ')' if r.get('alpha_criterion') else ''} | "
            f"{s['export']['seconds']} / {s['export']['peak_rss_gb']} | {r['artifact']['total_gb']} | "
            f"{r['lint_violations']} | {s['validate']['seconds']} / {s['validate']['peak_rss_gb']} | {sq} | "
            f"{r['validation']['passed']} |")
    return "\n".join(lines) + "\n"


def _child(argv: list[str]) -> int:
    name, cfg, work = argv[0], json.loads(argv[1]), Path(argv[2])
    config = replace(FullsizeConfig(), **{k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()})
    rec = run_one(name, config, work)
    (work / "record.json").write_text(json.dumps(rec, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1:]))
