"""``ditq bench gpu``: the torch-int8 backend against FP16/BF16 on the published DiT-XL/2 and PixArt-α shapes (random
weights), at a few batch sizes, on one CUDA GPU, in one short run (``scripts/gpu_check.sh``; no TensorRT needed).

Per model and float type: forward latency of FP, INT8 (one group) and INT8 with the group changing on every call
(the group-switch overhead is the difference), CUDA peak memory per forward, the weight bytes of FP and of all INT8
groups together (identical tensors shared), and the CUDA memory allocated with everything loaded. The recipe is a
min-max calibration with few steps, split into ``groups`` groups whose activation scales differ a little (timing does
not depend on the values). ``--quick --device cpu`` runs the same code on the tiny models, to know it runs.
Writes ``gpu_check.json`` (and prints a table).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from ditq.errors import DitqError


@dataclass(frozen=True)
class GpuCheckConfig:
    models: tuple[str, ...] = ("dit-xl2-256", "pixart-alpha-512")
    batches: tuple[int, ...] = (1, 8, 16)
    dtypes: tuple[str, ...] = ("float16", "bfloat16")
    device: str = "cuda"
    groups: int = 4
    warmup: int = 3
    repeats: int = 20
    calib_steps: int = 2
    calib_samples: int = 1
    seed: int = 0


QUICK = GpuCheckConfig(models=("tiny", "pixart-tiny"), batches=(1, 2), dtypes=("float32",), device="cpu", groups=2,
                       warmup=1, repeats=2)


def split_groups(recipe: Any, groups: int) -> Any:
    """``recipe`` (one group) as ``groups`` contiguous groups over the same timesteps; group k's activation scales
    are group 0's times ``1 + 0.05 k`` (distinct per-group modules, as a real G-group recipe has)."""
    import torch

    from ditq.artifacts.recipe import GroupSpec

    if recipe.num_groups != 1:
        raise DitqError(f"split_groups takes a one-group recipe, got {recipe.num_groups} groups")
    lo, hi = recipe.groups[0].interval
    edges = [lo + round(k * (hi - lo + 1) / groups) for k in range(groups + 1)]
    specs = tuple(GroupSpec(k, (edges[k], edges[k + 1] - 1), tuple(t for t in recipe.groups[0].timesteps
                                                                      if edges[k] <= t < edges[k + 1]))
                  for k in range(groups))
    tensors: dict[str, torch.Tensor] = {}
    for key, value in recipe.tensors.items():
        if not key.startswith("g0/"):
            tensors[key] = value
            continue
        for k in range(groups):
            factor = 1.0 + 0.05 * k if key.endswith(".act_scale") else 1.0
            tensors[f"g{k}/{key[3:]}"] = value * factor
    return replace(recipe, groups=specs, tensors=tensors)


def _bench_dtype(name: str, recipe: Any, dtype_name: str, config: GpuCheckConfig,
                 say: Callable[[str], None]) -> dict[str, Any]:
    import torch

    from ditq.bench.speed.torch_int8 import timing_inputs
    from ditq.models.configs import random_model
    from ditq.runtime.backends.torch_int8 import torch_int8_backend, unique_bytes

    device, dtype = torch.device(config.device), getattr(torch, dtype_name)
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    model = random_model(name, config.seed)  # afresh: the FP denoiser below moves it to the device in place
    say(f"{name} {dtype_name}: INT8 groups")
    q = torch_int8_backend(model, recipe, device=device, dtype=dtype)
    fp = model.denoiser().to(device, dtype)
    sync()
    out: dict[str, Any] = {
        "dtype": dtype_name, "groups": recipe.num_groups,
        "weights_bytes": {"fp": unique_bytes([fp]), "int8_all_groups": unique_bytes(q.modules),
                          "int8_shared_saving": q.shared_bytes},
        "cuda_allocated_bytes": torch.cuda.memory_allocated() if cuda else None, "rows": []}
    names = q.modules[0].cond_names
    with torch.no_grad():
        for batch in config.batches:
            say(f"{name} {dtype_name}: batch {batch}")
            x, t, c = timing_inputs(model, batch, config.seed, device, dtype)
            out["rows"].append({"batch": batch, **_time_batch(q.device_fns, fp, x, t, c, [c[k] for k in names],
                                                              config, sync, cuda)})
    return out


def _time_batch(fns_q: list[Callable[..., Any]], fp: Any, x: Any, t: Any, c: dict[str, Any], args: list[Any],
                config: GpuCheckConfig, sync: Callable[[], None], cuda: bool) -> dict[str, Any]:
    """FP, INT8 in one group, INT8 switching group on every call: peak memory of one call each, then timing."""
    import torch

    from ditq.bench.speed.machine import time_interleaved

    turn = [0]

    def switching() -> Any:
        turn[0] = (turn[0] + 1) % len(fns_q)
        return fns_q[turn[0]](x, t, *args)

    fns: dict[str, Callable[[], Any]] = {"fp": lambda: fp.predict(x, t, c), "int8": lambda: fns_q[0](x, t, *args),
                                         "int8_switching": switching}
    peak: dict[str, int] = {}
    for key, fn in fns.items():
        base = 0
        if cuda:
            sync()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        fn()
        sync()
        if cuda:
            peak[key] = torch.cuda.max_memory_allocated() - base
    stats = time_interleaved(fns, warmup=config.warmup, repeats=config.repeats, sync=sync)
    fp_ms, q_ms, sw_ms = (stats[k]["median_ms"] for k in ("fp", "int8", "int8_switching"))
    return {**stats, "int8_vs_fp": q_ms / fp_ms, "group_switch_overhead_ms": sw_ms - q_ms,
            "peak_activation_bytes": peak}


def run_gpu_check(config: GpuCheckConfig, out: Path, *, force: bool = False,
                  progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Measure every model x float type; one model's failure is recorded and the others still run."""
    import platform

    import torch

    from ditq.artifacts.outputs import check_output, output_file
    from ditq.calibration.calibrate import CalibConfig, calibrate
    from ditq.calibration.methods import method_config
    from ditq.models.configs import random_model

    say = progress or (lambda msg: None)
    if config.device == "cuda" and not torch.cuda.is_available():
        raise DitqError("bench gpu needs a CUDA GPU (torch sees none); use --quick --device cpu to try it here")
    check_output(Path(out), kind="GPU check JSON", force=force, what="file")  # refused before the measurements
    start = time.perf_counter()
    result: dict[str, Any] = {
        "config": asdict(config), "torch": torch.__version__, "cuda": torch.version.cuda,
        "gpu": torch.cuda.get_device_name(0) if config.device == "cuda" else None,
        "platform": platform.platform(), "models": []}
    for name in config.models:
        row: dict[str, Any] = {"model": name}
        try:
            t0 = time.perf_counter()
            say(f"{name}: min-max calibration, {config.calib_steps} steps (CPU)")
            model = random_model(name, config.seed)
            row["params"] = sum(p.numel() for p in model.transformer.parameters())
            recipe = split_groups(calibrate(model, method_config("minmax"), CalibConfig(
                steps=config.calib_steps, samples=config.calib_samples, seed=config.seed, progress=False)),
                config.groups)
            del model
            row["calibrate_s"] = round(time.perf_counter() - t0, 1)
            row["dtypes"] = []
            for d in config.dtypes:
                row["dtypes"].append(_bench_dtype(name, recipe, d, config, say))
                if config.device == "cuda":
                    torch.cuda.empty_cache()  # the float type's models are gone: free their blocks for the next
        except Exception as err:  # record it and measure the next model
            row["error"] = f"{type(err).__name__}: {err}"
            say(f"{name}: failed: {row['error']}")
        result["models"].append(row)
    result["seconds"] = round(time.perf_counter() - start, 1)
    with output_file(Path(out), kind="GPU check JSON", force=force) as tmp:
        tmp.write_text(json.dumps(result, indent=2) + "\n")
    return result


def format_table(result: dict[str, Any]) -> str:
    mib = 1 << 20
    lines = [f"GPU: {result['gpu'] or 'none (CPU run)'}  torch {result['torch']}",
             "| model | dtype | batch | FP ms | INT8 ms | INT8/FP | switch +ms | FP / INT8 weights MiB "
             "| peak act. MiB |",
             "|---|---|---|---|---|---|---|---|---|"]
    for m in result["models"]:
        if "error" in m:
            lines.append(f"| {m['model']} | error: {m['error']} |")
            continue
        for d in m["dtypes"]:
            w = d["weights_bytes"]
            for r in d["rows"]:
                peak = r["peak_activation_bytes"]
                lines.append(
                    f"| {m['model']} | {d['dtype']} | {r['batch']} | {r['fp']['median_ms']:.2f} | "
                    f"{r['int8']['median_ms']:.2f} | {r['int8_vs_fp']:.2f} | {r['group_switch_overhead_ms']:+.2f} | "
                    f"{w['fp'] / mib:.1f} / {w['int8_all_groups'] / mib:.1f} | "
                    + (f"{peak['fp'] / mib:.0f} / {peak['int8'] / mib:.0f}" if peak else "-") + " |")
    return "\n".join(lines)
