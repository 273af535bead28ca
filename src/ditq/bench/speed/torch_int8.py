"""The torch pair: the FP model vs ``runtime.torch_int8`` (``torch._int_mm``; fast on CUDA, a reference loop on
CPU): latency per batch, weight bytes, CUDA peak activation memory, whole sampling runs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ditq.bench.speed.config import SpeedConfig
from ditq.bench.speed.machine import ratio, time_interleaved
from ditq.bench.speed.models import BenchModel, time_sampling
from ditq.errors import DitqError


def timing_inputs(model: Any, batch: int, seed: int, device: Any, dtype: Any) -> tuple[Any, Any, dict[str, Any]]:
    """Seeded noise, a mid-trajectory timestep and conditions for ``batch`` rows, on ``device`` (float conditions
    in ``dtype``): the inputs every latency measurement times."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    x = torch.randn((batch, *model.sample_shape), generator=gen).to(device, dtype)
    t = torch.full((batch,), 500.0, device=device)
    cond = model.cond(torch.arange(batch) % (model.num_classes if model.kind == "dit" else model.num_conditions))
    return x, t, {k: v.to(device, dtype if v.is_floating_point() else v.dtype) for k, v in cond.items()}


def bench_torch(bm: BenchModel, recipe: Any, config: SpeedConfig,
                progress: Callable[[str], None] = lambda _msg: None) -> dict[str, Any]:
    """Torch FP vs ``torch_int8_backend`` on ``config.device``: latency per batch, weight bytes, sampling."""
    import torch

    from ditq.runtime.backends.torch_int8 import torch_int8_backend, unique_bytes

    if config.device == "cuda" and not torch.cuda.is_available():
        raise DitqError("--device cuda was asked for but torch sees no CUDA device; use --device cpu")
    device = torch.device(config.device)
    dtype = getattr(torch, config.torch_dtype)
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else None
    model = bm.model
    out: dict[str, Any] = {"backend": "torch-int8", "device": config.device, "dtype": config.torch_dtype,
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
            x, t, cond = timing_inputs(model, batch, config.seed, device, dtype)
            y = cond["class_labels"]
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
                         "ratio": ratio(stats["int8"], stats["fp"], "median_ms"),
                         "ratio_cpu": None if cuda else ratio(stats["int8"], stats["fp"], "cpu_median_ms"),
                         "ratio_min": ratio(stats["int8"], stats["fp"], "min_ms")})
    out["rows"] = rows
    out["memory"] = memory
    if config.sampling_steps:
        progress(f"{bm.name}: torch sampling")

        @torch.no_grad()
        def fp_call(x: torch.Tensor, t: torch.Tensor, y: dict[str, torch.Tensor]) -> torch.Tensor:
            c = {k: v.to(device, dtype if v.is_floating_point() else v.dtype) for k, v in y.items()}
            return fp.predict(x.to(device, dtype), t.to(device), c).float().cpu()

        out["sampling"] = time_sampling(bm, {"fp": fp_call, "int8": q}, config, sync=sync)
    return out
