"""Latency of ONNX graphs under ONNX Runtime (CPU), with the same session settings the runtime uses."""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np


def ort_latency_ms(path: Path, sample_shape: tuple[int, ...], *, batch: int, threads: int | None = None,
                   warmup: int = 5, repeats: int = 30, num_classes: int = 10) -> dict[str, Any]:
    """Median and spread of one forward at ``batch``, timed after ``warmup`` runs."""
    from ditq.runtime.backends import ort_session

    sess = ort_session(path, threads)
    rng = np.random.default_rng(0)
    feeds = {"hidden_states": rng.standard_normal((batch, *sample_shape), dtype=np.float32),
             "timestep": np.full((batch,), 500.0, np.float32),
             "class_labels": (np.arange(batch) % num_classes).astype(np.int64)}
    for _ in range(warmup):
        sess.run(None, feeds)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        sess.run(None, feeds)
        times.append((time.perf_counter() - start) * 1e3)
    q = np.percentile(times, [10, 90])
    return {"median_ms": statistics.median(times), "p10_ms": float(q[0]), "p90_ms": float(q[1]),
            "batch": batch, "threads": threads, "repeats": repeats}
