"""``ditq bench speed``: FP vs INT8 latency per backend, batch size and model, written to ``speed.json``/``speed.md``.

Backends, each a pair (FP, INT8) timed on the same inputs, interleaved repeat by repeat so that load from other
processes hits both alike:
- ``onnxruntime`` (CPU): ``reference.onnx`` (FP32) vs ``group_0.onnx`` (QDQ), sessions with the runtime's settings
  (all graph optimizations, ``CommonSubexpressionElimination`` off), so ONNX Runtime fuses each DQ->MatMul into an
  integer kernel. How many quantized GEMMs it fused is read back from the optimized graph it saves.
- ``torch``: the FP model vs ``runtime.torch_int8`` (``torch._int_mm``); meant for CUDA, where it is fast. On CPU
  ``torch._int_mm`` is a reference loop (tens of times slower than FP32), so it is off there unless asked for.

Each measurement reports the median and p10/p90 of the wall time, the median process CPU time (robust to other
processes competing for the cores when thread spinning is off; with spinning it includes spin time) and the
1-minute load average before and after. Also: peak memory (process RSS deltas for ORT sessions, CUDA peak
allocation for torch), ONNX graph + weight sizes (FP32 vs INT8 group graph), and a whole sampling run (DDIM with
classifier-free guidance). Models: the bundled demo (random weights of its architecture until its trained
weights are present), architecture-only models of ``models.configs`` calibrated in seconds (timing does not depend
on scale values), or a local model directory.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import platform
import resource
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ditq.errors import DitqError

log = logging.getLogger(__name__)

BACKENDS = ("onnxruntime", "torch")
# ONNX Runtime ops that run a quantized GEMM in integer arithmetic (what a DQ->MatMul can be fused into)
FUSED_GEMM_OPS = ("MatMulIntegerToFloat", "QLinearMatMul", "DynamicQuantizeMatMul", "QGemm", "MatMulInteger",
                  "MatMulNBits", "DynamicQuantizeLSTM")
FLOAT_GEMM_OPS = ("MatMul", "Gemm", "FusedMatMul", "FusedGemm")


@dataclass(frozen=True)
class SpeedConfig:
    models: tuple[str, ...] = ("demo", "dit-s2-like")
    batches: tuple[int, ...] = (1, 8, 32)
    threads: int = 2
    warmup: int = 3
    repeats: int = 10
    backends: tuple[str, ...] = ("onnxruntime",)
    device: str = "cpu"  # torch backend: "cpu" or "cuda"
    torch_dtype: str = "float32"  # float parts of the torch pair (FP model and INT8 model alike)
    sampling_steps: int = 20  # DDIM steps of the whole-sampling timing; 0 skips it
    sampling_batch: int = 4  # images per sampling run (CFG doubles the model batch)
    sampling_repeats: int = 3
    cfg_scale: float = 3.0
    spinning: bool = False  # ORT intra-op thread spinning (fast on an idle machine, burns CPU on a busy one)
    profile: bool = False  # ORT per-op-type time breakdown at profile_batch
    profile_batch: int = 8
    method: str | None = None  # None: htg (2 groups) for CPU-sized models, minmax for the GPU-sized ones
    groups: int = 2
    calib_steps: int = 4
    calib_samples: int = 2
    keep_artifacts: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.models:
            raise DitqError("--models is empty; name at least one model (demo, dit-s2-like, ... or a directory)")
        if not self.batches or min(self.batches) < 1:
            raise DitqError(f"--batches must be positive integers, got {list(self.batches)}")
        if self.threads < 1 or self.repeats < 1 or self.warmup < 0:
            raise DitqError(f"--threads and --repeats must be >= 1 and --warmup >= 0, got {self.threads}, "
                            f"{self.repeats}, {self.warmup}")
        bad = [b for b in self.backends if b not in BACKENDS]
        if bad or not self.backends:
            raise DitqError(f"unknown backend {bad[0] if bad else ''!r}; choose from {', '.join(BACKENDS)}")
        if self.device not in ("cpu", "cuda"):
            raise DitqError(f"--device must be cpu or cuda, got {self.device!r}")
        if self.torch_dtype not in ("float32", "float16", "bfloat16"):
            raise DitqError(f"--torch-dtype must be float32, float16 or bfloat16, got {self.torch_dtype!r}")
        if self.sampling_steps < 0 or self.sampling_batch < 1 or self.sampling_repeats < 1:
            raise DitqError("--sampling-steps must be >= 0, the sampling batch and repeats >= 1")


QUICK = SpeedConfig(models=("tiny",), batches=(1, 2), threads=1, warmup=2, repeats=5,
                    backends=("onnxruntime", "torch"), sampling_steps=4, sampling_batch=1, sampling_repeats=2)


def default_config(*, quick: bool = False, cuda: bool | None = None) -> SpeedConfig:
    """``QUICK`` for CI smoke runs; otherwise the CPU set, or the GPU set (torch pair, DiT-XL/2) on CUDA."""
    if quick:
        return QUICK
    if cuda is None:
        import torch

        cuda = torch.cuda.is_available()
    if cuda:
        return SpeedConfig(models=("demo", "dit-xl2-256", "dit-xl2-512"), backends=("torch",), device="cuda")
    return SpeedConfig()


# -- measuring -----------------------------------------------------------------------------------------------------

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


def _ratio(q: dict[str, Any], fp: dict[str, Any], key: str) -> float | None:
    return q[key] / fp[key] if q.get(key) and fp.get(key) else None


# -- ONNX Runtime --------------------------------------------------------------------------------------------------

def speed_session(path: Path, threads: int | None, *, spinning: bool = True, optimized_path: Path | None = None,
                  profile_prefix: str | None = None) -> Any:
    """A CPU session with the runtime's settings (``runtime.backends.ort_session`` with ``fuse=True``), plus the
    knobs a benchmark needs: thread spinning, saving the optimized graph, profiling."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    if optimized_path is not None:
        opts.optimized_model_filepath = str(optimized_path)
        # keep weights out of the saved graph: large models would pass protobuf's 2 GB limit
        opts.add_session_config_entry("session.optimized_model_external_initializers_file_name",
                                      Path(optimized_path).stem + ".bin")
        opts.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    if profile_prefix is not None:
        opts.enable_profiling = True
        opts.profile_file_prefix = profile_prefix
    try:
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"],
                                    disabled_optimizers=["CommonSubexpressionElimination"])
    except Exception as err:  # onnxruntime raises its own non-DitqError types for unreadable graphs
        raise DitqError(f"onnxruntime cannot load {path}: {str(err).splitlines()[0]}") from err


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
from ditq.bench.speed import hwm_bytes, ort_feeds, rss_bytes, speed_session
a = json.loads(sys.argv[1])
base = rss_bytes()
sess = speed_session(a["path"], a["threads"])
loaded = rss_bytes()
sess.run(None, ort_feeds(a["shape"], a["batch"], a["classes"]))
ran = rss_bytes()
print(json.dumps({"base_rss_bytes": base, "session_rss_bytes": loaded - base, "run_rss_bytes": ran - loaded,
                  "peak_rss_bytes": hwm_bytes() - base}))
"""


def hwm_bytes() -> int:
    """Peak RSS of this process image (/proc VmHWM: unlike getrusage's ru_maxrss, not inherited over fork+exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return peak_rss_bytes()


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
        speed_session(path, threads, optimized_path=opt)
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
    with tempfile.TemporaryDirectory(prefix="ditq-prof-") as tmp:
        sess = speed_session(path, threads, spinning=spinning, profile_prefix=str(Path(tmp) / "prof"))
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


# -- models --------------------------------------------------------------------------------------------------------

@dataclass
class BenchModel:
    name: str
    model: Any  # LoadedModel
    weights: str  # "trained" | "random"
    note: str = ""


def resolve_model(name: str, seed: int = 0) -> BenchModel:
    """``demo`` (random weights of its architecture while its trained weights are absent), an architecture
    name from ``models.configs``, or a local model directory."""
    from ditq.models.configs import ARCH_CONFIGS, random_model
    from ditq.models.loading import load_model

    if name == "demo":
        from ditq.testbed.demo import demo_model_dir

        root = demo_model_dir()
        if (root / "transformer" / "config.json").is_file() or (root / "config.json").is_file():
            return BenchModel("demo", load_model("demo"), "trained")
        return BenchModel("demo", random_model("demo-arch", seed), "random",
                          "demo weights not present: the demo architecture with random weights")
    if name in ARCH_CONFIGS:
        return BenchModel(name, random_model(name, seed), "random")
    if Path(name).expanduser().is_dir():
        return BenchModel(Path(name).name, load_model(name), "trained")
    raise DitqError(f"unknown model {name!r}; use demo, one of {', '.join(ARCH_CONFIGS)}, or a model directory")


def model_info(bm: BenchModel) -> dict[str, Any]:
    cfg = bm.model.config
    return {"name": bm.name, "source": bm.model.source, "weights": bm.weights, "note": bm.note,
            "params": sum(p.numel() for p in bm.model.transformer.parameters()),
            "tokens": (int(cfg.sample_size) // int(cfg.patch_size)) ** 2,
            "hidden": int(cfg.num_attention_heads) * int(cfg.attention_head_dim), "layers": int(cfg.num_layers),
            "sample_shape": list(bm.model.sample_shape)}


def quick_recipe(bm: BenchModel, config: SpeedConfig) -> tuple[Any, dict[str, Any]]:
    """A recipe in seconds: few calibration steps/samples (scale values do not change timing)."""
    from ditq.calibration.calibrate import CalibConfig, calibrate
    from ditq.calibration.methods import method_config
    from ditq.models.configs import GPU_MODELS

    method = config.method or ("minmax" if bm.name in GPU_MODELS else "htg")
    mc = method_config(method, groups=config.groups) if method == "htg" else method_config(method)
    start = time.perf_counter()
    recipe = calibrate(bm.model, mc, CalibConfig(steps=config.calib_steps, samples=config.calib_samples,
                                                 seed=config.seed, progress=False))
    return recipe, {"method": method, "groups": recipe.num_groups, "steps": config.calib_steps,
                    "samples": config.calib_samples, "seconds": round(time.perf_counter() - start, 2)}


# -- the pairs -----------------------------------------------------------------------------------------------------

def _time_sampling(bm: BenchModel, fns: dict[str, Callable[..., Any]], config: SpeedConfig,
                   sync: Callable[[], None] | None = None) -> dict[str, Any]:
    import torch

    from ditq.core.sampler import make_scheduler, sample

    model = bm.model
    cond = model.cond(torch.arange(config.sampling_batch) % model.num_conditions)

    def run(fn: Callable[..., Any]) -> Callable[[], Any]:
        return lambda: sample(fn, make_scheduler(model.scheduler_config, "ddim"), cond,
                              steps=config.sampling_steps, cfg_scale=config.cfg_scale, null_cond=model.null_cond(),
                              sample_shape=model.sample_shape, seed=config.seed)

    stats = time_interleaved({k: run(f) for k, f in fns.items()}, warmup=0, repeats=config.sampling_repeats,
                             sync=sync)
    fp, q = stats["fp"], stats["int8"]
    return {"scheduler": "ddim", "steps": config.sampling_steps, "images": config.sampling_batch,
            "model_batch": config.sampling_batch * (2 if config.cfg_scale != 1.0 else 1), "cfg": config.cfg_scale,
            "fp": fp, "int8": q, "ratio": _ratio(q, fp, "median_ms")}


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
    import torch

    from ditq.runtime.backends import GroupedBackend, onnx_feeds

    model = bm.model
    out: dict[str, Any] = {"backend": "onnxruntime", "threads": config.threads, "spinning": config.spinning,
                           "sizes": artifact_sizes(art)}
    progress(f"{bm.name}: onnxruntime fusion check")
    out["fusion"] = {"int8": fusion_report(art.path(0), config.threads),
                     "fp32": fusion_report(art.path(None), config.threads)}
    out["memory"] = {key: session_memory(path, config.threads, model.sample_shape, max(config.batches),
                                         model.num_classes)
                     for key, path in (("fp", art.path(None)), ("int8", art.path(0)))}
    sessions = {key: speed_session(path, config.threads, spinning=config.spinning)
                for key, path in (("fp", art.path(None)), ("int8", art.path(0)))}
    rows = []
    for batch in config.batches:
        progress(f"{bm.name}: onnxruntime batch {batch}")
        feeds = ort_feeds(model.sample_shape, batch, model.num_classes)
        stats = time_interleaved({k: (lambda s=s, f=feeds: s.run(None, f)) for k, s in sessions.items()},
                                 warmup=config.warmup, repeats=config.repeats)
        rows.append({"batch": batch, "fp": stats["fp"], "int8": stats["int8"],
                     "ratio": _ratio(stats["int8"], stats["fp"], "median_ms"),
                     "ratio_cpu": _ratio(stats["int8"], stats["fp"], "cpu_median_ms"),
                     "ratio_min": _ratio(stats["int8"], stats["fp"], "min_ms")})
    out["rows"] = rows
    if config.profile:
        progress(f"{bm.name}: onnxruntime profile")
        feeds = ort_feeds(model.sample_shape, config.profile_batch, model.num_classes)
        out["profile"] = {"batch": config.profile_batch,
                          "fp": ort_profile(art.path(None), feeds, config.threads, spinning=config.spinning),
                          "int8": ort_profile(art.path(0), feeds, config.threads, spinning=config.spinning)}
    if config.sampling_steps:
        progress(f"{bm.name}: onnxruntime sampling")
        group_sessions = [sessions["int8"]] + [speed_session(art.path(g.group_id), config.threads,
                                                             spinning=config.spinning) for g in art.groups[1:]]

        def fn(sess: Any) -> Callable[..., torch.Tensor]:
            def run(x: torch.Tensor, t: torch.Tensor, y: dict[str, torch.Tensor]) -> torch.Tensor:
                return torch.from_numpy(sess.run(None, onnx_feeds(x, t, y))[0])

            return run

        fp_backend = GroupedBackend("onnxruntime-fp", [(0, model.num_train_timesteps - 1)], [fn(sessions["fp"])])
        q_backend = GroupedBackend("onnxruntime", art.intervals, [fn(s) for s in group_sessions])
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # the sampler's own torch ops are tiny; idle OpenMP workers would compete with ORT
        try:
            out["sampling"] = _time_sampling(bm, {"fp": fp_backend, "int8": q_backend}, config)
        finally:
            torch.set_num_threads(threads)
        out["sampling"]["group_calls"] = q_backend.calls
    return out


def bench_torch(bm: BenchModel, recipe: Any, config: SpeedConfig,
                progress: Callable[[str], None] = lambda _msg: None) -> dict[str, Any]:
    """Torch FP vs ``torch_int8_backend`` on ``config.device``: latency per batch, weight bytes, sampling."""
    import torch

    from ditq.runtime.torch_int8 import torch_int8_backend, unique_bytes

    if config.device == "cuda" and not torch.cuda.is_available():
        raise DitqError("--device cuda was asked for but torch sees no CUDA device; use --device cpu")
    device = torch.device(config.device)
    dtype = getattr(torch, config.torch_dtype)
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else None
    model = bm.model
    out: dict[str, Any] = {"backend": "torch", "device": config.device, "dtype": config.torch_dtype,
                           "kernel": "torch._int_mm" + ("" if cuda else " (CPU: reference loop, not optimized)"),
                           "threads": torch.get_num_threads()}
    q = torch_int8_backend(model, recipe, device=device, dtype=dtype)  # first: ``fp`` moves the model in place
    fp = model.denoiser().to(device)
    if dtype != torch.float32:
        fp = fp.to(dtype)
    out["weights_bytes"] = {"fp": unique_bytes([fp]), "int8_all_groups": unique_bytes(q.modules),
                            "int8_shared_saving": q.shared_bytes}
    q_fn = q.device_fns[0]
    rows = []
    memory: dict[str, Any] = {}
    with torch.no_grad():
        for batch in config.batches:
            progress(f"{bm.name}: torch batch {batch} ({config.device})")
            gen = torch.Generator().manual_seed(config.seed)
            x = torch.randn((batch, *model.sample_shape), generator=gen).to(device, dtype)
            t = torch.full((batch,), 500.0, device=device)
            y = (torch.arange(batch) % model.num_classes).to(device)
            fns = {"fp": lambda x=x, t=t, y=y: fp(x, t, y), "int8": lambda x=x, t=t, y=y: q_fn(x, t, y)}
            if cuda:
                for key, f in fns.items():
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                    base = torch.cuda.memory_allocated()
                    f()
                    torch.cuda.synchronize()
                    memory.setdefault(key, {})[f"batch_{batch}_peak_activation_bytes"] = \
                        torch.cuda.max_memory_allocated() - base
            stats = time_interleaved(fns, warmup=config.warmup, repeats=config.repeats, sync=sync)
            rows.append({"batch": batch, "fp": stats["fp"], "int8": stats["int8"],
                         "ratio": _ratio(stats["int8"], stats["fp"], "median_ms"),
                         "ratio_cpu": None if cuda else _ratio(stats["int8"], stats["fp"], "cpu_median_ms"),
                         "ratio_min": _ratio(stats["int8"], stats["fp"], "min_ms")})
    out["rows"] = rows
    out["memory"] = memory
    if config.sampling_steps:
        progress(f"{bm.name}: torch sampling")

        @torch.no_grad()
        def fp_call(x: torch.Tensor, t: torch.Tensor, y: dict[str, torch.Tensor]) -> torch.Tensor:
            c = {k: v.to(device, dtype if v.is_floating_point() else v.dtype) for k, v in y.items()}
            return fp.predict(x.to(device, dtype), t.to(device), c).float().cpu()

        out["sampling"] = _time_sampling(bm, {"fp": fp_call, "int8": q}, config, sync=sync)
    return out


# -- the whole benchmark -------------------------------------------------------------------------------------------

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


def benchmark_speed(config: SpeedConfig, out: Path, *, progress: Callable[[str], None] | None = None,
                    force: bool = False) -> dict[str, Any]:
    """Run every model x backend x batch of ``config``; write ``out/speed.json`` and ``out/speed.md``.

    ``out`` follows ditq's output rule (``ditq.outputs``): it appears whole when the run ends, an existing one is
    replaced only with ``force`` and only if it holds an earlier speed benchmark.
    """
    from ditq.artifacts.outputs import staging_dir

    with staging_dir(Path(out), kind="ditq.bench.speed", force=force) as tmp:
        return _benchmark_speed(config, tmp, say=progress or (lambda msg: log.info("%s", msg)))


def _benchmark_speed(config: SpeedConfig, out: Path, say: Callable[[str], None]) -> dict[str, Any]:
    import torch

    result: dict[str, Any] = {"kind": "ditq.bench.speed", "config": asdict(config), "machine": machine_info(config),
                              "models": []}
    threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    started = time.perf_counter()
    try:
        for name in config.models:
            say(f"{name}: building and calibrating")
            bm = resolve_model(name, config.seed)
            recipe, calib = quick_recipe(bm, config)
            entry: dict[str, Any] = {**model_info(bm), "calibration": calib, "backends": []}
            with tempfile.TemporaryDirectory(prefix=f"ditq-speed-{bm.name}-") as tmp:
                work = out / "artifacts" / bm.name if config.keep_artifacts else Path(tmp)
                if "onnxruntime" in config.backends:
                    entry["backends"].append(bench_onnxruntime(bm, recipe, config, work, say))
                if "torch" in config.backends:
                    entry["backends"].append(bench_torch(bm, recipe, config, say))
            result["models"].append(entry)
            del bm, recipe
            write_results(result, out)
    finally:
        torch.set_num_threads(threads)
    result["seconds"] = round(time.perf_counter() - started, 1)
    result["peak_rss_bytes"] = hwm_bytes()
    result["machine"]["load_avg_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    write_results(result, out)
    return result


def write_results(result: dict[str, Any], out: Path) -> None:
    from ditq.artifacts import write_json

    write_json(out / "speed.json", result)
    (out / "speed.md").write_text(format_markdown(result))


def _mb(n: float | None) -> str:
    return "-" if n is None else f"{n / 2**20:.1f} MB"


def _ms(s: dict[str, Any]) -> str:
    return f"{s['median_ms']:.2f} ({s['p10_ms']:.2f}–{s['p90_ms']:.2f})"


def _r(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def format_markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    cfg = result["config"]
    lines = ["# ditq bench speed", "",
             f"{m['processor'] or m['machine']}, {m['cpu_count']} CPUs (AVX2 {m['avx2']}, VNNI "
             f"{m['avx512_vnni'] or m['avx_vnni']}), GPU: {m['cuda'] or 'none'}; torch {m['torch']}, onnxruntime "
             f"{m['onnxruntime']}. Threads {cfg['threads']}, ORT spinning {'on' if cfg['spinning'] else 'off'}, "
             f"{cfg['warmup']} warm-up + {cfg['repeats']} repeats, FP and INT8 interleaved. Load average at start: "
             f"{m['load_avg_start']}.", "",
             "Times: median (p10–p90) wall ms of one transformer forward. `CPU ratio`: ratio of median process CPU "
             "time (less sensitive to other processes on the machine when spinning is off).", "",
             "| model | params | tokens | backend | batch | FP ms | INT8 ms | INT8/FP | CPU ratio | load |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    notes: list[str] = []
    for e in result["models"]:
        for b in e["backends"]:
            label = b["backend"] + (f" ({b['device']}, {b['dtype']})" if b["backend"] == "torch" else "")
            for row in b["rows"]:
                lines.append(f"| {e['name']} | {e['params'] / 1e6:.1f}M | {e['tokens']} | {label} | {row['batch']} | "
                             f"{_ms(row['fp'])} | {_ms(row['int8'])} | {_r(row['ratio'])} | {_r(row['ratio_cpu'])} | "
                             f"{row['int8']['load_before']}–{row['int8']['load_after']} |")
        calib = e["calibration"]
        notes.append(f"**{e['name']}** ({e['weights']} weights{'; ' + e['note'] if e['note'] else ''}): "
                     f"hidden {e['hidden']}, {e['layers']} layers; recipe {calib['method']} with {calib['groups']} "
                     f"groups ({calib['seconds']} s).")
        for b in e["backends"]:
            if b["backend"] == "onnxruntime":
                f, s, mem = b["fusion"]["int8"], b["sizes"], b["memory"]
                notes.append(
                    f"- onnxruntime: {f['fused']} of {f['quantized_linears']} quantized GEMMs fused into integer "
                    f"kernels ({', '.join(f'{k} {v}' for k, v in f['fused_ops'].items()) or 'none'}), "
                    f"{f['unfused']} left as DequantizeLinear→float GEMM, {f['float_gemms']} float GEMMs "
                    f"(attention, embedders, adaLN), {f['quantize_nodes']} QuantizeLinear. Sizes: FP32 graph "
                    f"{_mb(s['fp32']['total_bytes'])}, INT8 group graph {_mb(s['int8_group']['total_bytes'])}, "
                    f"directory ({s['groups']} groups + reference) {_mb(s['directory_bytes'])}. Process RSS "
                    f"growth (fresh process; session + one run at batch {mem['fp']['batch']}; peak): FP32 "
                    f"{_mb(mem['fp']['session_rss_bytes'])} + {_mb(mem['fp']['run_rss_bytes'])}; peak "
                    f"{_mb(mem['fp']['peak_rss_bytes'])}, INT8 {_mb(mem['int8']['session_rss_bytes'])} + "
                    f"{_mb(mem['int8']['run_rss_bytes'])}; peak {_mb(mem['int8']['peak_rss_bytes'])}.")
            else:
                w = b["weights_bytes"]
                notes.append(f"- torch ({b['kernel']}): weights FP {_mb(w['fp'])}, INT8 all groups "
                             f"{_mb(w['int8_all_groups'])} (sharing saved {_mb(w['int8_shared_saving'])}).")
            if "sampling" in b:
                sp = b["sampling"]
                notes.append(f"  - sampling, {sp['steps']} {sp['scheduler'].upper()} steps with CFG {sp['cfg']} "
                             f"({sp['images']} images, model batch {sp['model_batch']}): FP {_ms(sp['fp'])}, INT8 "
                             f"{_ms(sp['int8'])}, ratio {_r(sp['ratio'])}.")
            if "profile" in b:
                for key in ("fp", "int8"):
                    ops = ", ".join(f"{o['op']} {o['share'] * 100:.0f}%" for o in b["profile"][key]["ops"][:8])
                    notes.append(f"  - profile {key} (batch {b['profile']['batch']}): {ops}")
    lines += ["", *notes, "", f"Total {result.get('seconds', '…')} s, peak RSS "
              f"{_mb(result.get('peak_rss_bytes'))}.", ""]
    return "\n".join(lines)


def with_overrides(config: SpeedConfig, **kwargs: Any) -> SpeedConfig:
    """``config`` with the non-None keyword arguments replaced (CLI flags over a default set)."""
    return replace(config, **{k: v for k, v in kwargs.items() if v is not None})


__all__ = ["BACKENDS", "QUICK", "SpeedConfig", "benchmark_speed", "default_config", "fusion_report", "graph_bytes",
           "ort_latency_ms", "speed_session", "time_interleaved", "with_overrides"]
