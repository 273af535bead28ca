"""The machine and the clock: CPU flags and versions, process memory, load average, interleaved timing."""

from __future__ import annotations

import os
import platform
import resource
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from ditq.bench.speed.config import SpeedConfig


def machine_info(config: SpeedConfig) -> dict[str, Any]:
    import onnxruntime
    import torch

    flags = ""
    try:
        flags = next((ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags")), "")
    except OSError:
        pass
    info = {"platform": platform.platform(), "machine": platform.machine(), "processor": platform.processor(),
            "cpu_count": os.cpu_count(), "avx2": " avx2" in flags, "avx512_vnni": "avx512_vnni" in flags,
            "avx_vnni": " avx_vnni" in flags, "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "load_avg_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}
    return info


def rss_bytes() -> int:
    """Current resident set size of this process (Linux /proc; elsewhere the peak from getrusage)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return peak_rss_bytes()


def peak_rss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) * (1 if platform.system() == "Darwin" else 1024)


def hwm_bytes() -> int:
    """Peak RSS of this process image (/proc VmHWM: unlike getrusage's ru_maxrss, not inherited over fork+exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return peak_rss_bytes()


def load_avg() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def summarize(wall_ms: Sequence[float], cpu_ms: Sequence[float] | None = None) -> dict[str, Any]:
    q = np.percentile(wall_ms, [10, 90])
    out = {"median_ms": statistics.median(wall_ms), "p10_ms": float(q[0]), "p90_ms": float(q[1]),
           "min_ms": min(wall_ms), "repeats": len(wall_ms)}
    if cpu_ms:
        out["cpu_median_ms"] = statistics.median(cpu_ms)
    return out


def time_interleaved(fns: dict[str, Callable[[], Any]], *, warmup: int, repeats: int,
                     sync: Callable[[], None] | None = None) -> dict[str, dict[str, Any]]:
    """Time each callable ``repeats`` times, alternating between them (and their order) every repeat."""
    sync = sync or (lambda: None)
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    sync()
    wall: dict[str, list[float]] = {k: [] for k in fns}
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    names = list(fns)
    load_before = load_avg()
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            c0, t0 = time.process_time(), time.perf_counter()
            fns[name]()
            sync()
            wall[name].append((time.perf_counter() - t0) * 1e3)
            cpu[name].append((time.process_time() - c0) * 1e3)
    load_after = load_avg()
    return {k: {**summarize(wall[k], cpu[k]), "load_before": load_before, "load_after": load_after} for k in fns}


def ratio(q: dict[str, Any], fp: dict[str, Any], key: str) -> float | None:
    return q[key] / fp[key] if q.get(key) and fp.get(key) else None
