"""``ditq bench speed``: FP vs INT8 latency per backend, batch size and model, written to ``speed.json``/``speed.md``.

Backends, each a pair (FP, INT8) timed on the same inputs, interleaved repeat by repeat so that load from other
processes hits both alike:
- ``onnxruntime`` (CPU): ``reference.onnx`` (FP32) vs ``group_0.onnx`` (QDQ), sessions with the runtime's settings
  (all graph optimizations, ``CommonSubexpressionElimination`` off), so ONNX Runtime fuses each DQ->MatMul into an
  integer kernel. How many quantized GEMMs it fused is read back from the optimized graph it saves.
- ``torch-int8``: the FP model vs ``runtime.backends.torch_int8`` (``torch._int_mm``); meant for CUDA, where it is
  fast. On CPU ``torch._int_mm`` is a reference loop (tens of times slower than FP32), so it is off there unless
  asked for.

Each measurement reports the median and p10/p90 of the wall time, the median process CPU time (robust to other
processes competing for the cores when thread spinning is off; with spinning it includes spin time) and the
1-minute load average before and after. Also: peak memory (process RSS deltas for ORT sessions, CUDA peak
allocation for torch), ONNX graph + weight sizes (FP32 vs INT8 group graph), and a whole sampling run (DDIM with
classifier-free guidance). Models: the bundled demo (random weights of its architecture until its trained
weights are present), architecture-only models of ``models.configs`` calibrated in seconds (timing does not depend
on scale values), or a local model directory.
"""

from __future__ import annotations

from ditq.bench.speed.config import BACKENDS, QUICK, SpeedConfig, default_config, with_overrides
from ditq.bench.speed.machine import machine_info, time_interleaved
from ditq.bench.speed.models import BenchModel, model_info, quick_recipe, resolve_model
from ditq.bench.speed.ort import (
    bench_onnx_artifact,
    bench_onnxruntime,
    fusion_report,
    graph_bytes,
    ort_feeds,
    ort_latency_ms,
    session_memory,
)
from ditq.bench.speed.report import format_markdown, write_results
from ditq.bench.speed.run import benchmark_speed
from ditq.bench.speed.torch_int8 import bench_torch

__all__ = ["BACKENDS", "QUICK", "BenchModel", "SpeedConfig", "bench_onnx_artifact", "bench_onnxruntime", "bench_torch",
           "benchmark_speed", "default_config", "format_markdown", "fusion_report", "graph_bytes", "machine_info",
           "model_info", "ort_feeds", "ort_latency_ms", "quick_recipe", "resolve_model", "session_memory",
           "time_interleaved", "with_overrides", "write_results"]
