"""The whole benchmark: every model x backend x batch of a config, into one output directory."""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ditq.bench.speed.config import SpeedConfig
from ditq.bench.speed.machine import hwm_bytes, machine_info
from ditq.bench.speed.models import model_info, quick_recipe, resolve_model
from ditq.bench.speed.ort import bench_onnxruntime
from ditq.bench.speed.report import write_results
from ditq.bench.speed.torch_int8 import bench_torch

log = logging.getLogger("ditq.bench.speed")


def benchmark_speed(config: SpeedConfig, out: Path, *, progress: Callable[[str], None] | None = None,
                    force: bool = False) -> dict[str, Any]:
    """Run every model x backend x batch of ``config``; write ``out/speed.json`` and ``out/speed.md``.

    ``out`` follows ditq's output rule (``ditq.artifacts.outputs``): it appears whole when the run ends, an existing one
    is replaced only with ``force`` and only if it holds an earlier speed benchmark.
    """
    from ditq.artifacts.outputs import staging_dir

    with staging_dir(Path(out), kind="ditq.bench.speed", force=force) as tmp:
        return _benchmark_speed(config, tmp, say=progress or (lambda msg: log.info("%s", msg)))


def _benchmark_speed(config: SpeedConfig, out: Path, say: Callable[[str], None]) -> dict[str, Any]:
    from ditq.core.threads import torch_threads  # imports torch: not at `ditq bench speed --help`

    result: dict[str, Any] = {"kind": "ditq.bench.speed", "config": asdict(config), "machine": machine_info(config),
                              "models": []}
    started = time.perf_counter()
    with torch_threads(config.threads):
        for name in config.models:
            say(f"{name}: building and calibrating")
            bm = resolve_model(name, config.seed)
            recipe, calib = quick_recipe(bm, config)
            entry: dict[str, Any] = {**model_info(bm), "calibration": calib, "backends": []}
            with tempfile.TemporaryDirectory(prefix=f"ditq-speed-{bm.name}-") as tmp:
                work = out / "artifacts" / bm.name if config.keep_artifacts else Path(tmp)
                if "onnxruntime" in config.backends:
                    entry["backends"].append(bench_onnxruntime(bm, recipe, config, work, say))
                if "torch-int8" in config.backends:
                    entry["backends"].append(bench_torch(bm, recipe, config, say))
            result["models"].append(entry)
            del bm, recipe
            write_results(result, out)
    result["seconds"] = round(time.perf_counter() - started, 1)
    result["peak_rss_bytes"] = hwm_bytes()
    result["machine"]["load_avg_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    write_results(result, out)
    return result
