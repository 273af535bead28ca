"""``ditq bench single-graph``: one graph with per-group runtime inputs (``export.single_graph``) against the G
per-group graphs, on ONNX Runtime (CPU): latency with the group changing every call, process RSS of the loaded
sessions, ONNX Runtime's integer-GEMM fusion, and the largest difference of the outputs per group.

Writes ``single_graph.json`` and ``single_graph.md`` (the measurement behind the README's TensorRT memory note).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ditq.errors import DitqError


@dataclass(frozen=True)
class SingleGraphConfig:
    models: tuple[str, ...] = ("tiny", "demo")
    batch: int = 8
    threads: int = 2
    warmup: int = 3
    repeats: int = 20  # timed calls per variant (each cycles to the next group)
    calib_steps: int = 10
    calib_samples: int = 4
    groups: int | None = 4  # HTG groups (None: the knee)
    seed: int = 0


_PROBE = """
import json, sys
import onnxruntime  # before the baseline: its own code is not the sessions' memory
from ditq.bench.speed.machine import hwm_bytes, rss_bytes
from ditq.runtime.backends import ort_session
import numpy as np
a = json.loads(sys.argv[1])
base = rss_bytes()
sessions = [ort_session(p, a["threads"]) for p in a["paths"]]
loaded = rss_bytes()
rng = np.random.default_rng(0)
x = {"hidden_states": rng.standard_normal(a["shape"], dtype=np.float32),
     "timestep": np.full((a["shape"][0],), 500.0, np.float32),
     "class_labels": (np.arange(a["shape"][0]) % 10).astype(np.int64)}
extra = [dict(np.load(f)) for f in a["feeds"]]
for g in range(a["groups"]):
    sessions[g % len(sessions)].run(None, {**x, **extra[g]})
ran = rss_bytes()
print(json.dumps({"session_rss_bytes": loaded - base, "run_rss_bytes": ran - loaded,
                  "peak_rss_bytes": hwm_bytes() - base}))
"""


def _memory(paths: list[Path], feeds: list[dict[str, np.ndarray]], shape: list[int], threads: int,
            work: Path) -> dict[str, int]:
    """RSS growth of a fresh process from loading ``paths`` and running each group once (G sessions: one each)."""
    files = []
    for g, f in enumerate(feeds):
        files.append(str(work / f"feeds_{len(paths)}_{g}.npz"))
        np.savez(files[-1], **f)
    args = json.dumps({"paths": [str(p) for p in paths], "feeds": files, "shape": shape, "threads": threads,
                       "groups": len(feeds)})
    proc = subprocess.run([sys.executable, "-c", _PROBE, args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise DitqError(f"the memory probe failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _bench_model(name: str, config: SingleGraphConfig, work: Path, say: Callable[[str], None]) -> dict[str, Any]:
    from ditq.bench.speed.machine import time_interleaved
    from ditq.bench.speed.models import resolve_model
    from ditq.bench.speed.ort import fusion_report, graph_bytes
    from ditq.calibration.calibrate import CalibConfig, calibrate
    from ditq.calibration.methods import method_config
    from ditq.export.onnx_export import export_onnx
    from ditq.export.single_graph import save_single_graph, single_graph
    from ditq.runtime.backends import ort_session

    bm = resolve_model(name, config.seed)
    say(f"{name}: calibrating ({config.calib_steps} steps)")
    recipe = calibrate(bm.model, method_config("htg", groups=config.groups),
                       CalibConfig(steps=config.calib_steps, samples=config.calib_samples, seed=config.seed,
                                   progress=False))
    say(f"{name}: exporting {recipe.num_groups} groups")
    art = export_onnx(bm.model, recipe, work / name / "onnx", precision="fp32", progress=False)
    sg = single_graph(art)
    single_path = art.root / "single.onnx"  # beside weights.bin, which it references
    save_single_graph(sg, single_path)
    g = len(art.groups)
    shape = [config.batch, *bm.model.sample_shape]
    rng = np.random.default_rng(config.seed)
    x = {"hidden_states": rng.standard_normal(shape, dtype=np.float32),
         "timestep": np.full((config.batch,), 500.0, np.float32),
         "class_labels": (np.arange(config.batch) % max(1, bm.model.num_conditions - 1)).astype(np.int64)}

    say(f"{name}: exactness (fake-quant sessions)")
    exact_single = ort_session(single_path, config.threads, fuse=False)
    diffs = []
    for i, group in enumerate(art.groups):
        want = ort_session(art.path(group.group_id), config.threads, fuse=False).run(None, x)[0]
        got = exact_single.run(None, {**x, **sg.feeds[i]})[0]
        diffs.append(float(np.abs(got - want).max() / max(float(np.abs(want).max()), 1e-12)))
    del exact_single

    say(f"{name}: latency, {config.repeats} calls each, the group changing every call")
    sessions = [ort_session(art.path(group.group_id), config.threads) for group in art.groups]
    single = ort_session(single_path, config.threads)
    turn = {"g_sessions": 0, "single_graph": 0}

    def per_group() -> None:
        k = turn["g_sessions"] = (turn["g_sessions"] + 1) % g
        sessions[k].run(None, x)

    def one_graph() -> None:
        k = turn["single_graph"] = (turn["single_graph"] + 1) % g
        single.run(None, {**x, **sg.feeds[k]})

    stats = time_interleaved({"g_sessions": per_group, "single_graph": one_graph}, warmup=config.warmup,
                             repeats=config.repeats)
    say(f"{name}: memory (fresh processes)")
    mem_g = _memory([art.path(gr.group_id) for gr in art.groups], [{} for _ in art.groups], shape, config.threads,
                    work / name)
    mem_1 = _memory([single_path], sg.feeds, shape, config.threads, work / name)
    fusion_g, fusion_1 = fusion_report(art.path(0), config.threads), fusion_report(single_path, config.threads)
    group_bytes = [graph_bytes(art.path(gr.group_id))["total_bytes"] for gr in art.groups]
    single_bytes = graph_bytes(single_path)["total_bytes"]
    return {
        "model": name, "weights": bm.weights, "params": sum(p.numel() for p in bm.model.transformer.parameters()),
        "groups": g, "batch": config.batch, "threads": config.threads,
        "runtime_inputs": {"tensors": len(sg.varying), "ratio_pairs": len(sg.ratios),
                           "floats_per_group": int(sum(v.size for v in sg.feeds[0].values()))},
        "max_rel_diff_per_group": diffs,
        "latency": stats, "latency_ratio": stats["single_graph"]["median_ms"] / stats["g_sessions"]["median_ms"],
        "memory": {"g_sessions": mem_g, "single_graph": mem_1,
                   "ratio": mem_1["session_rss_bytes"] / max(mem_g["session_rss_bytes"], 1)},
        "graph_bytes": {"g_graphs_each": group_bytes, "g_graphs_total": sum(group_bytes), "single_graph": single_bytes},
        "fused_gemms": {"g_sessions": f"{fusion_g['fused']}/{fusion_g['quantized_linears']}",
                        "single_graph": f"{fusion_1['fused']}/{fusion_1['quantized_linears']}"},
    }


def format_markdown(result: dict[str, Any]) -> str:
    mib = 1 << 20
    lines = ["# One graph with per-group runtime inputs vs G per-group graphs (ONNX Runtime, CPU)", "",
             f"Machine: {result['machine']}. Latency: median of {result['config']['repeats']} calls, the two variants "
             "interleaved, the group changing every call. Memory: RSS growth of a fresh process loading the "
             "sessions (and after one run per group). Graph: .onnx plus the external weights it references.", "",
             "| model | G | batch | G sessions ms | single ms | ratio | G sessions RSS MiB | single RSS MiB | "
             "RSS ratio | graphs MiB (G / single) | fused GEMMs (G / single) | max rel. diff |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["models"]:
        lat, mem = r["latency"], r["memory"]
        lines.append(
            f"| {r['model']} ({r['params'] / 1e6:.1f}M) | {r['groups']} | {r['batch']} | "
            f"{lat['g_sessions']['median_ms']:.2f} | {lat['single_graph']['median_ms']:.2f} | "
            f"{r['latency_ratio']:.2f} | {mem['g_sessions']['session_rss_bytes'] / mib:.1f} | "
            f"{mem['single_graph']['session_rss_bytes'] / mib:.1f} | "
            f"{mem['ratio']:.2f} | {r['graph_bytes']['g_graphs_total'] / mib:.2f} / "
            f"{r['graph_bytes']['single_graph'] / mib:.2f} | {r['fused_gemms']['g_sessions']} / "
            f"{r['fused_gemms']['single_graph']} | {max(r['max_rel_diff_per_group']):.1e} |")
    lines += ["", "Per-group runtime inputs per call: " + "; ".join(
        f"{r['model']}: {r['runtime_inputs']['tensors']} tensors + {r['runtime_inputs']['ratio_pairs']} scale-ratio "
        f"pairs, {r['runtime_inputs']['floats_per_group']} floats" for r in result["models"]), ""]
    return "\n".join(lines)


def bench_single_graph(config: SingleGraphConfig, out: Path, *, force: bool = False,
                       progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    import tempfile

    from ditq.artifacts.outputs import staging_dir
    from ditq.bench.speed.config import SpeedConfig
    from ditq.bench.speed.machine import machine_info

    say = progress or (lambda msg: None)
    start = time.perf_counter()
    with staging_dir(Path(out), kind="ditq.bench.single_graph", force=force) as tmp:
        with tempfile.TemporaryDirectory(prefix="ditq-single-") as work:
            models = [_bench_model(m, config, Path(work), say) for m in config.models]
        info = machine_info(SpeedConfig(threads=config.threads))
        machine = (f"{info.get('machine')}, {info.get('cpu_count')} cores, AVX-512 VNNI {info.get('avx512_vnni')}, "
                   f"onnxruntime {info.get('onnxruntime')}")
        result = {"config": asdict(config), "machine": machine, "machine_info": info, "models": models,
                  "seconds": round(time.perf_counter() - start, 1)}
        (tmp / "single_graph.json").write_text(json.dumps(result, indent=2) + "\n")
        (tmp / "single_graph.md").write_text(format_markdown(result))
    return result
