"""``ditq bench serve``: concurrent clients running full sampling loops against a real Triton server.

For each client count (default 1, 2, 4, 8), every client runs ``loops`` full DDIM sampling loops (one image, CFG:
two rows per request) through ``tritonclient`` over HTTP on 127.0.0.1. Measured: denoising steps/s and images/s
(all clients together, wall time), p50/p99 request latency, how often Triton's batcher put rows from different
timestep groups into one router batch (the router's own counters), and failed or lost requests (a run with any is
reported and fails the bench: exit 3). Writes ``serve.json`` and ``serve.md``.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ditq.errors import DitqError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServeBenchConfig:
    clients: tuple[int, ...] = (1, 2, 4, 8)
    steps: int = 20  # DDIM steps per sampling loop
    loops: int = 2  # sampling loops per client
    cfg_scale: float = 3.0
    max_batch_size: int = 16
    queue_delay_us: int = 2000
    threads: int | None = None  # ONNX Runtime threads per group model
    timeout_s: float = 600.0  # the whole run, all client counts together

    def __post_init__(self) -> None:
        if not self.clients or min(self.clients) < 1 or max(self.clients) > 64:
            raise DitqError(f"--clients must list counts in [1, 64], got {list(self.clients)}")
        if self.steps < 1 or self.loops < 1:
            raise DitqError(f"--steps and --loops must be >= 1, got {self.steps} and {self.loops}")


QUICK = ServeBenchConfig(clients=(1, 2), steps=5, loops=1)


def _infer(client: Any, x: np.ndarray, t: np.ndarray, labels: np.ndarray) -> np.ndarray:
    from tritonclient.http import InferInput

    inputs = []
    for name, value, dtype in (("hidden_states", x, "FP32"), ("timestep", t.reshape(-1, 1), "FP32"),
                               ("class_labels", labels.reshape(-1, 1), "INT64")):
        tensor = InferInput(name, list(value.shape), dtype)
        tensor.set_data_from_numpy(value)
        inputs.append(tensor)
    return client.infer("transformer", inputs).as_numpy("sample")


@dataclass
class _ClientLog:
    latencies_ms: list[float] = field(default_factory=list)
    failed: int = 0
    lost: int = 0
    images: int = 0
    errors: list[str] = field(default_factory=list)


def _client_loop(url: str, art: Any, config: ServeBenchConfig, seed: int, deadline: float, out: _ClientLog,
                 delay_s: float = 0.0) -> None:
    """``loops`` DDIM sampling loops (torch schedulers; the model through the server), after ``delay_s``: clients
    that start apart sit at different timesteps, as users do."""
    import torch
    import tritonclient.http as http

    from ditq.core.sampler import make_scheduler, sample

    num_classes = int(art.model.get("num_classes") or 0)
    null = art.model.get("null_class", num_classes)
    shape = tuple(art.model["sample_shape"])
    with http.InferenceServerClient(url, network_timeout=60) as client:
        def denoise(x: torch.Tensor, t: torch.Tensor, cond: dict[str, torch.Tensor]) -> torch.Tensor:
            if time.monotonic() > deadline:
                raise TimeoutError("the bench ran past its time limit")
            start = time.perf_counter()
            try:
                y = _infer(client, x.numpy().astype(np.float32), t.numpy().astype(np.float32),
                           cond["class_labels"].numpy().astype(np.int64))
            except Exception as err:  # a failed request: counted, and this loop stops
                out.failed += 1
                out.errors.append(" ".join(str(err).split())[:200])
                raise
            out.latencies_ms.append((time.perf_counter() - start) * 1e3)
            if y.shape != tuple(x.shape) or not np.isfinite(y).all():
                out.lost += 1
            return torch.from_numpy(y.copy())

        time.sleep(delay_s)
        for i in range(config.loops):
            label = (seed * 7 + i) % max(num_classes, 1)
            try:
                sample(denoise, make_scheduler(art.scheduler_config, "ddim"), {"class_labels": torch.tensor([label])},
                       steps=config.steps, cfg_scale=config.cfg_scale, null_cond={"class_labels": torch.tensor([null])},
                       sample_shape=shape, seed=seed * 1000 + i)
            except Exception:
                return
            out.images += 1


def _stats(path: Path | None) -> dict[str, int]:
    try:
        return json.loads(path.read_text()) if path else {}
    except (OSError, ValueError):
        return {}


def _check_class_conditioned(art: Any) -> None:
    if art.model.get("conditioning") != "class":
        raise DitqError("ditq bench serve drives class-conditioned (DiT) sets; PixArt sets need prompt embeddings")


def run_load(server_url: str, art: Any, config: ServeBenchConfig, stats_path: Path | None = None,
             progress: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """One row per client count, against a running server (``ditq.serve.launch.start_server``)."""
    _check_class_conditioned(art)
    deadline = time.monotonic() + config.timeout_s
    warmup = ServeBenchConfig(clients=(1,), steps=2, loops=1)  # imports and first requests, untimed
    _client_loop(server_url, art, warmup, 0, deadline, _ClientLog())
    rows = []
    for n in config.clients:
        before = _stats(stats_path)
        logs = [_ClientLog() for _ in range(n)]
        threads = [threading.Thread(target=_client_loop, args=(server_url, art, config, c, deadline, logs[c], 0.04 * c),
                                    daemon=True) for c in range(n)]
        start = time.perf_counter()
        for th in threads:
            th.start()
        for th in threads:
            th.join(timeout=max(1.0, deadline - time.monotonic()))
        wall = time.perf_counter() - start
        after = _stats(stats_path)
        lat = np.array([x for lg in logs for x in lg.latencies_ms]) if any(lg.latencies_ms for lg in logs) else None
        batches = after.get("batches", 0) - before.get("batches", 0)
        mixed = after.get("mixed_batches", 0) - before.get("mixed_batches", 0)
        expected = n * config.loops * config.steps
        row = {
            "clients": n, "wall_s": round(wall, 3),
            "requests": int(0 if lat is None else len(lat)), "expected_requests": expected,
            "steps_per_s": round(sum(len(lg.latencies_ms) for lg in logs) / wall, 2),
            "images_per_s": round(sum(lg.images for lg in logs) / wall, 3),
            "p50_ms": None if lat is None else round(float(np.percentile(lat, 50)), 2),
            "p99_ms": None if lat is None else round(float(np.percentile(lat, 99)), 2),
            "router_batches": batches, "mixed_group_batches": mixed,
            "mixed_group_ratio": round(mixed / batches, 3) if batches else None,
            "failed": sum(lg.failed for lg in logs), "lost": sum(lg.lost for lg in logs)
            + max(0, expected - sum(len(lg.latencies_ms) for lg in logs) - sum(lg.failed for lg in logs)),
            "hung_clients": sum(th.is_alive() for th in threads),
            "errors": sorted({e for lg in logs for e in lg.errors})[:3],
        }
        rows.append(row)
        if progress:
            progress(f"{n} client(s): {row['steps_per_s']} steps/s, p50 {row['p50_ms']} ms, p99 {row['p99_ms']} ms, "
                     f"mixed {mixed}/{batches}, failed {row['failed']}, lost {row['lost']}")
    return rows


def format_markdown(result: dict[str, Any]) -> str:
    c = result["config"]
    lines = [f"# ditq bench serve: {result['artifact']}", "",
             f"Triton (PyTriton) on {result['host']}, ONNX Runtime on CPU; each client "
             f"runs {c['loops']} DDIM loop(s) of {c['steps']} steps, one image with CFG (2 rows per request); "
             f"dynamic batching: max_batch_size {c['max_batch_size']}, queue delay {c['queue_delay_us']} us.", "",
             "| clients | steps/s | images/s | p50 ms | p99 ms | mixed-group batches | failed | lost |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        ratio = "n/a" if r["mixed_group_ratio"] is None else (f"{r['mixed_group_batches']}/{r['router_batches']} "
                                                              f"({r['mixed_group_ratio']:.0%})")
        lines.append(f"| {r['clients']} | {r['steps_per_s']} | {r['images_per_s']} | {r['p50_ms']} | {r['p99_ms']} | "
                     f"{ratio} | {r['failed']} | {r['lost']} |")
    return "\n".join(lines) + "\n"


def benchmark_serve(artifact: Path, out: Path, config: ServeBenchConfig, *, python: str | Path | None = None,
                    force: bool = False, progress: Callable[[str], None] | None = None,
                    ports: Sequence[int] = (18000, 18001)) -> dict[str, Any]:
    """Start a server on ``artifact``, run the load, write ``serve.json`` / ``serve.md`` to ``out``."""
    import platform
    import tempfile

    from ditq.artifacts.onnx import OnnxArtifact
    from ditq.artifacts.outputs import staging_dir
    from ditq.serve.launch import ServeOptions, start_server

    art = OnnxArtifact.read(Path(artifact))  # the manifest; start_server verifies the whole set (once)
    _check_class_conditioned(art)  # before a server starts
    with tempfile.TemporaryDirectory(prefix="ditq-bench-serve-") as tmpdir, \
            staging_dir(Path(out), kind="ditq.bench.serve", force=force, inputs=[artifact]) as tmp:
        stats = Path(tmpdir) / "router-stats.json"
        opts = ServeOptions(Path(artifact), http_port=ports[0], grpc_port=ports[1],
                            max_batch_size=config.max_batch_size, queue_delay_us=config.queue_delay_us,
                            threads=config.threads, stats_path=stats)
        with start_server(opts, python=python) as server:
            rows = run_load(server.http_url, art, config, stats, progress)
        result = {"artifact": str(artifact), "host": platform.node(),
                  "config": asdict(config), "rows": rows}
        (tmp / "serve.json").write_text(json.dumps(result, indent=2) + "\n")
        (tmp / "serve.md").write_text(format_markdown(result))
    return result
