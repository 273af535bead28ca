"""Model Optimizer peer rows (``nvidia-modelopt``, optional): the same Linear layers quantized by its INT8 max and
SmoothQuant, INT4-weight (max, AWQ-lite) and FP8 (its default for Flux and SD3) configs, evaluated with the grid's
data and metrics."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from typing import Any

import torch

from ditq.bench.quality_grid.config import QualityConfig
from ditq.bench.quality_grid.report import cell_metrics
from ditq.bench.quality_grid.seeds import image_metrics

# the held-out measurements found SmoothQuant at alpha 0.8 the strongest one-scale peer: both alphas are rows
PEER_CONFIGS = ("int8-max", "int8-smoothquant", "int8-smoothquant-a08", "fp8-max", "w4a8-max", "w4a8-awq-lite")
FP8_E4M3 = {"num_bits": (4, 3), "axis": None}  # Model Optimizer's FP8_DEFAULT_CFG: E4M3, per tensor


def peer_bits(kind: str) -> str:
    """The grid's bit-width label of a peer config."""
    return "W4A8" if kind.startswith("w4a8") else "W8A8-FP8" if kind.startswith("fp8") else "W8A8"


def modelopt_config(linears: list[str], kind: str, w4_block: int = 0) -> dict[str, Any]:
    """A Model Optimizer quantize config touching only ``linears``: INT8 per-tensor inputs, and INT8 per-channel
    (``int8-*``) or INT4 per-channel / block (``w4a8-*``) weights; algorithm max, SmoothQuant or AWQ-lite.
    ``fp8-max``: Model Optimizer's FP8 default, E4M3 per-tensor weights and inputs, max calibration."""
    w_bits = 4 if kind.startswith("w4a8") else 8
    weight: dict[str, Any] = dict(FP8_E4M3) if kind.startswith("fp8") else {"num_bits": w_bits, "axis": 0}
    inputs: dict[str, Any] = dict(FP8_E4M3) if kind.startswith("fp8") else {"num_bits": 8, "axis": None}
    if w_bits == 4 and w4_block:
        weight = {"num_bits": 4, "block_sizes": {-1: w4_block, "type": "static"}}
    quant_cfg: list[dict[str, Any]] = [{"quantizer_name": "*", "enable": False}]
    for lin in linears:
        quant_cfg += [{"quantizer_name": f"*{lin}.weight_quantizer", "cfg": dict(weight)},
                      {"quantizer_name": f"*{lin}.input_quantizer", "cfg": dict(inputs)}]
    algorithm: Any = {"int8-max": "max", "w4a8-max": "max", "fp8-max": "max",
                      "int8-smoothquant": {"method": "smoothquant", "alpha": 0.5},
                      "int8-smoothquant-a08": {"method": "smoothquant", "alpha": 0.8},
                      "w4a8-awq-lite": "awq_lite"}[kind]
    return {"quant_cfg": quant_cfg, "algorithm": algorithm}


def peer_rows(model: Any, config: QualityConfig, refs: dict[int, Any], specs: dict[int, Any], scorer: Any,
           say: Callable[[str], None]) -> tuple[list[dict[str, Any]], str]:
    from ditq._deps import has_module

    if not config.peer:
        return [], "Model Optimizer peer rows: not asked for"
    if not has_module("modelopt.torch.quantization"):
        return [], ("Model Optimizer peer rows skipped: nvidia-modelopt is not installed "
                    "(pip install 'ditq[peer]' -c constraints.txt)")
    import modelopt.torch.quantization as mtq

    from ditq.bench.quality import evaluate
    from ditq.calibration.calibrate import CalibConfig
    from ditq.models.loading import quant_sites
    from ditq.testbed.scoring import SamplingSpec, run_sampler

    linears = [lin for s in quant_sites(model.transformer) for lin in s.linears]
    calib = CalibConfig(steps=config.calib_steps or CalibConfig.steps,
                        samples=config.calib_samples or CalibConfig.samples)
    rows = []
    for kind, seed in ((k, seed) for k in PEER_CONFIGS for seed in config.seeds):
        bits = peer_bits(kind)
        if bits not in config.bits:
            continue
        # the calibration sampler: the model's own scheduler, the grid's CFG, this calibration seed (as ditq's cells)
        calib_spec = SamplingSpec(steps=calib.steps, cfg_scale=config.cfg_scale, seed=seed)
        say(f"modelopt {kind}: calibrating (seed {seed})")
        start = time.perf_counter()
        den = copy.deepcopy(model.denoiser())

        def loop(m: torch.nn.Module, spec: SamplingSpec = calib_spec) -> None:
            run_sampler(model, m, torch.arange(calib.samples) % model.num_conditions, spec)

        with torch.no_grad():
            den = mtq.quantize(den, modelopt_config(linears, kind, config.w4_block), loop)
        seconds = round(time.perf_counter() - start, 1)
        for s in config.steps:
            say(f"modelopt {kind}: evaluating at {s} steps")
            q = evaluate(model, den, refs[s], specs[s], scorer, sqnr_rows=config.sqnr_samples)
            q.update(image_metrics(q.pop("images"), refs[s].images))
            rows.append({"method": f"modelopt {kind}", "bits": bits, "steps": s, "calib_seed": seed,
                         "backend": "torch (modelopt)",
                         **cell_metrics(q), "groups": 1, "dynamic": False, "calibration_seconds": seconds})
    import modelopt

    return rows, (f"Model Optimizer {modelopt.__version__} (`mtq.quantize`, fake quantization in torch, same Linear "
                  f"layers, calibration data {calib.steps} steps x {calib.samples} samples, seed(s) "
                  f"{', '.join(map(str, config.seeds))})")
