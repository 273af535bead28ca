"""The ONNX Runtime pair (CPU): FP32 reference graph vs INT8 group graphs, in sessions the runtime builds
(``runtime.backends.ort_session``, fused): which GEMMs ORT fused, graph sizes, session memory, latency per batch,
per-op profile and whole sampling runs."""

from __future__ import annotations

import collections
import json
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ditq.bench.speed.config import SpeedConfig
from ditq.bench.speed.machine import ratio, time_interleaved
from ditq.bench.speed.models import BenchModel, time_sampling
from ditq.errors import DitqError

FUSED_GEMM_OPS = ("MatMulIntegerToFloat", "QLinearMatMul", "DynamicQuantizeMatMul", "QGemm", "MatMulInteger",
                  "MatMulNBits", "DynamicQuantizeLSTM")

FLOAT_GEMM_OPS = ("MatMul", "Gemm", "FusedMatMul", "FusedGemm")


def ort_feeds(sample_shape: Sequence[int], batch: int, num_classes: int = 10, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"hidden_states": rng.standard_normal((batch, *sample_shape), dtype=np.float32),
            "timestep": np.full((batch,), 500.0, np.float32),
            "class_labels": (np.arange(batch) % num_classes).astype(np.int64)}


def ort_latency_ms(path: Path, sample_shape: tuple[int, ...], *, batch: int, threads: int | None = None,
                   warmup: int = 5, repeats: int = 30, num_classes: int = 10) -> dict[str, Any]:
    """Median and spread of one forward at ``batch``, timed after ``warmup`` runs (the runtime's own session)."""
    from ditq.runtime.backends import ort_session

    sess = ort_session(path, threads)
    feeds = ort_feeds(sample_shape, batch, num_classes)
    stats = time_interleaved({"run": lambda: sess.run(None, feeds)}, warmup=warmup, repeats=repeats)["run"]
    return {"median_ms": stats["median_ms"], "p10_ms": stats["p10_ms"], "p90_ms": stats["p90_ms"],
            "batch": batch, "threads": threads, "repeats": repeats}

_MEMORY_PROBE = """
import json, sys
import onnxruntime  # imported before the baseline: its own code is not the session's memory
from ditq.bench.speed.machine import hwm_bytes, rss_bytes
from ditq.bench.speed.ort import ort_feeds
from ditq.runtime.backends import ort_session
a = json.loads(sys.argv[1])
base = rss_bytes()
sess = ort_session(a["path"], a["threads"])
loaded = rss_bytes()
sess.run(None, ort_feeds(a["shape"], a["batch"], a["classes"]))
ran = rss_bytes()
print(json.dumps({"base_rss_bytes": base, "session_rss_bytes": loaded - base, "run_rss_bytes": ran - loaded,
                  "peak_rss_bytes": hwm_bytes() - base}))
"""


def session_memory(path: Path, threads: int | None, sample_shape: Sequence[int], batch: int,
                   num_classes: int = 10) -> dict[str, int]:
    """RSS growth of a fresh process from creating a session on ``path`` and from one run at ``batch``.

    A separate process, because in this one freed memory from earlier work is reused and hides the growth.
    """
    import subprocess
    import sys

    args = json.dumps({"path": str(path), "threads": threads, "shape": list(sample_shape), "batch": batch,
                       "classes": num_classes})
    proc = subprocess.run([sys.executable, "-c", _MEMORY_PROBE, args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise DitqError(f"the memory probe of {path} failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
    return {**json.loads(proc.stdout.strip().splitlines()[-1]), "batch": batch}


def fusion_report(path: Path, threads: int | None = None) -> dict[str, Any]:
    """Which GEMMs ONNX Runtime runs in integer kernels after optimizing ``path`` (read from the saved graph).

    ``fused``: integer GEMM kernels (``FUSED_GEMM_OPS``); ``unfused``: float GEMMs still fed by a
    DequantizeLinear (fake-quant arithmetic, no speed-up); ``float``: the other float GEMMs (attention BMMs,
    embedders, adaLN, ...); ``quantized_linears``: weight DequantizeLinear nodes in the graph as exported.
    """
    import onnx

    exported = onnx.load(str(path), load_external_data=False)
    inits = {t.name: t.data_type for t in exported.graph.initializer}
    int8 = (onnx.TensorProto.INT8, onnx.TensorProto.UINT8, onnx.TensorProto.INT4, onnx.TensorProto.UINT4)
    weight_dqs = sum(1 for n in exported.graph.node
                     if n.op_type == "DequantizeLinear" and inits.get(n.input[0]) in int8)
    with tempfile.TemporaryDirectory(prefix="ditq-opt-") as tmp:
        opt = Path(tmp) / "optimized.onnx"
        from ditq.runtime.backends import ort_session

        ort_session(path, threads, optimized_path=opt)
        model = onnx.load(str(opt), load_external_data=False)
    counts = collections.Counter(n.op_type for n in model.graph.node)
    dq_out = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    float_gemms = [n for n in model.graph.node if n.op_type in FLOAT_GEMM_OPS]
    unfused = [n for n in float_gemms if any(i in dq_out for i in n.input)]
    return {
        "quantized_linears": weight_dqs,
        "fused": sum(counts[o] for o in FUSED_GEMM_OPS),
        "fused_ops": {o: counts[o] for o in FUSED_GEMM_OPS if counts[o]},
        "unfused": len(unfused),
        "float_gemms": len(float_gemms) - len(unfused),
        "quantize_nodes": counts["QuantizeLinear"],
        "dequantize_nodes": counts["DequantizeLinear"],
        "op_counts": dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))),
    }


def graph_bytes(path: Path) -> dict[str, int]:
    """Bytes of one ONNX graph: the .onnx file plus the external-data ranges it references (each once)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    ranges: set[tuple[str, int, int]] = set()
    for t in model.graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            info = {e.key: e.value for e in t.external_data}
            ranges.add((info.get("location", ""), int(info.get("offset", 0)), int(info.get("length", 0))))
    external = sum(r[2] for r in ranges)
    size = Path(path).stat().st_size
    return {"graph_bytes": size, "weight_bytes": external, "total_bytes": size + external}


def artifact_sizes(art: Any) -> dict[str, Any]:
    """FP32 reference vs one INT8 group graph (graph + weights), and the whole directory on disk."""
    return {"fp32": graph_bytes(art.path(None)), "int8_group": graph_bytes(art.path(0)),
            "groups": len(art.groups), "directory_bytes": sum(p.stat().st_size for p in art.root.iterdir()
                                                              if p.is_file())}


def ort_profile(path: Path, feeds: dict[str, np.ndarray], threads: int, *, spinning: bool, runs: int = 3,
                top: int = 12) -> dict[str, Any]:
    """Per-op-type share of kernel time over ``runs`` runs (after one warm-up), from ORT's profiler."""
    from ditq.runtime.backends import ort_session

    with tempfile.TemporaryDirectory(prefix="ditq-prof-") as tmp:
        sess = ort_session(path, threads, spinning=spinning, profile_prefix=str(Path(tmp) / "prof"))
        for _ in range(runs + 1):
            sess.run(None, feeds)
        events = json.loads(Path(sess.end_profiling()).read_text())
    runs_us = [e["dur"] for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"][1:]
    by_op: dict[str, float] = collections.defaultdict(float)
    first_run_end = next((e["ts"] + e["dur"] for e in events if e.get("name") == "model_run"), 0)
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time") and e["ts"] >= first_run_end:
            by_op[e["args"]["op_name"]] += e["dur"]
    total = sum(by_op.values()) or 1.0
    ranked = sorted(by_op.items(), key=lambda kv: -kv[1])
    return {"run_ms": [r / 1e3 for r in runs_us],
            "ops": [{"op": k, "share": round(v / total, 4), "ms_per_run": round(v / 1e3 / max(len(runs_us), 1), 2)}
                    for k, v in ranked[:top]]}


def bench_onnxruntime(bm: BenchModel, recipe: Any, config: SpeedConfig, work: Path,
                      progress: Callable[[str], None]) -> dict[str, Any]:
    """Export ``recipe`` to ``work/onnx`` and time it (``bench_onnx_artifact``)."""
    from ditq.export.onnx_export import export_onnx

    start = time.perf_counter()
    art = export_onnx(bm.model, recipe, work / "onnx", force=True, progress=False)
    seconds = round(time.perf_counter() - start, 2)
    return {**bench_onnx_artifact(bm, art, config, progress), "export_seconds": seconds}


def bench_onnx_artifact(bm: BenchModel, art: Any, config: SpeedConfig,
                        progress: Callable[[str], None] = lambda _msg: None) -> dict[str, Any]:
    """FP32 reference vs INT8 group graphs of an ONNX set: fusion, sizes, memory, latency per batch, sampling."""
    from ditq.runtime.backends import ort_session

    model = bm.model
    out: dict[str, Any] = {"backend": "onnxruntime", "threads": config.threads, "spinning": config.spinning,
                           "sizes": artifact_sizes(art)}
    progress(f"{bm.name}: onnxruntime fusion check")
    out["fusion"] = {"int8": fusion_report(art.path(0), config.threads),
                     "fp32": fusion_report(art.path(None), config.threads)}
    out["memory"] = {key: session_memory(path, config.threads, model.sample_shape, max(config.batches),
                                         model.num_classes)
                     for key, path in (("fp", art.path(None)), ("int8", art.path(0)))}
    sessions = {key: ort_session(path, config.threads, spinning=config.spinning)
                for key, path in (("fp", art.path(None)), ("int8", art.path(0)))}
    rows = []
    for batch in config.batches:
        progress(f"{bm.name}: onnxruntime batch {batch}")
        feeds = ort_feeds(model.sample_shape, batch, model.num_classes)
        stats = time_interleaved({k: (lambda s=s, f=feeds: s.run(None, f)) for k, s in sessions.items()},
                                 warmup=config.warmup, repeats=config.repeats)
        rows.append({"batch": batch, "fp": stats["fp"], "int8": stats["int8"],
                     "ratio": ratio(stats["int8"], stats["fp"], "median_ms"),
                     "ratio_cpu": ratio(stats["int8"], stats["fp"], "cpu_median_ms"),
                     "ratio_min": ratio(stats["int8"], stats["fp"], "min_ms")})
    out["rows"] = rows
    if config.profile:
        progress(f"{bm.name}: onnxruntime profile")
        feeds = ort_feeds(model.sample_shape, config.profile_batch, model.num_classes)
        out["profile"] = {"batch": config.profile_batch,
                          "fp": ort_profile(art.path(None), feeds, config.threads, spinning=config.spinning),
                          "int8": ort_profile(art.path(0), feeds, config.threads, spinning=config.spinning)}
    if config.sampling_steps:
        progress(f"{bm.name}: onnxruntime sampling")
        out["sampling"] = _ort_sampling(bm, art, sessions, config)
    return out


def _ort_sampling(bm: BenchModel, art: Any, sessions: dict[str, Any], config: SpeedConfig) -> dict[str, Any]:
    """Whole sampling runs: the FP reference session vs the INT8 group sessions behind the grouped backend."""
    import torch

    from ditq.core.threads import torch_threads
    from ditq.runtime.backends import GroupedBackend, onnx_feeds, ort_session

    model = bm.model
    group_sessions = [sessions["int8"]] + [ort_session(art.path(g.group_id), config.threads,
                                                       spinning=config.spinning) for g in art.groups[1:]]

    def fn(sess: Any) -> Callable[..., torch.Tensor]:
        def run(x: torch.Tensor, t: torch.Tensor, y: dict[str, torch.Tensor]) -> torch.Tensor:
            return torch.from_numpy(sess.run(None, onnx_feeds(x, t, y))[0])

        return run

    fp_backend = GroupedBackend("onnxruntime-fp", [(0, model.num_train_timesteps - 1)], [fn(sessions["fp"])])
    q_backend = GroupedBackend("onnxruntime", art.intervals, [fn(s) for s in group_sessions])
    with torch_threads(1):  # the sampler's own torch ops are tiny; idle OpenMP workers would compete with ORT
        sampling = time_sampling(bm, {"fp": fp_backend, "int8": q_backend}, config)
    sampling["group_calls"] = q_backend.calls
    return sampling
