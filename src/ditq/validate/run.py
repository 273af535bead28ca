"""``validate(artifact, model, recipe, out)``: per group, torch FP golden vs ONNX Runtime FP vs ONNX Runtime QDQ.

The QDQ graph is gated with exact Q/DQ arithmetic (``onnxrt-qdq``: what TensorRT and the torch fake-quant
reference compute, also reported). ONNX Runtime's fused CPU integer kernels run too (``onnxrt-qdq-fused``) and are
reported without a gate: on x86 CPUs without VNNI their int16 partial sums can saturate with full-range weights.
Inputs come from the FP model's own sampling trajectory (CFG batch included), picked at steps whose timestep
lies in each group's interval, so every graph is checked on the data it will serve.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ditq.calibration.recipe import Recipe
from ditq.errors import DitqError
from ditq.export.artifact import OnnxArtifact
from ditq.models.conditioning import Cond
from ditq.models.dit import Denoiser, LoadedModel
from ditq.models.schedule import check_schedule
from ditq.runtime.backends import group_denoiser
from ditq.runtime.sampler import make_scheduler, sample
from ditq.validate.compare import Thresholds, compare_group, metrics

log = logging.getLogger(__name__)

DEFAULT_THRESHOLDS = {
    "onnxrt-fp": Thresholds(min_cosine=0.99999, min_sqnr_db=60.0),
    "onnxrt-qdq": Thresholds(min_cosine=0.98, min_sqnr_db=15.0),
    # ONNX Runtime's fused CPU integer kernels: reported, not gated (see runtime.backends.ort_session)
    "onnxrt-qdq-fused": Thresholds(min_cosine=-1.0, min_sqnr_db=-math.inf),
}


@dataclass(frozen=True)
class ValidateConfig:
    steps: int = 50
    samples: int = 4
    feeds_per_group: int = 3
    cfg_scale: float = 3.0
    seed: int = 1234
    thresholds: dict[str, Thresholds] | None = None
    fused: bool = True  # also run (ungated) ONNX Runtime's fused integer kernels


def trajectory_feeds(model: LoadedModel, config: ValidateConfig) -> list[dict[str, np.ndarray]]:
    """Every model input of one FP sampling run: x_t, t and the conditioning (CFG batch)."""
    feeds: list[dict[str, np.ndarray]] = []

    def record(_i: int, x: torch.Tensor, t: torch.Tensor, cond: Cond, _eps: torch.Tensor) -> None:
        feeds.append({k: v.numpy().copy() for k, v in {"hidden_states": x, "timestep": t, **cond}.items()})

    den = model.denoiser()
    sample(den.predict, make_scheduler(model.scheduler_config),
           model.cond(torch.arange(config.samples) % model.num_conditions), steps=config.steps,
           cfg_scale=config.cfg_scale, null_cond=model.null_cond(), sample_shape=model.sample_shape,
           seed=config.seed, on_step=record)
    return feeds


def _call(den: Denoiser, feed: dict[str, np.ndarray]) -> np.ndarray:
    args = [torch.from_numpy(feed[k]) for k in ("hidden_states", "timestep", *den.cond_names)]
    return np.ascontiguousarray(den(*args).numpy())


@torch.no_grad()
def validate(artifact: OnnxArtifact, model: LoadedModel, recipe: Recipe | None, out: Path,
             config: ValidateConfig = ValidateConfig()) -> dict[str, Any]:
    """Compare every group; write ``validation.json`` and Polygraphy files under ``out/group_{g}/``."""
    if artifact.model["sha256"] != model.sha256:
        raise DitqError("the ONNX set was exported from another model (sha256 differs); re-run export")
    check_schedule(artifact.scheduler_config, model.scheduler_config, recorded_as=f"the ONNX set {artifact.root}",
                   actual_as=f"the model's scheduler ({model.scheduler_source or model.source})")
    thresholds = {**DEFAULT_THRESHOLDS, **(config.thresholds or {})}
    all_feeds = trajectory_feeds(model, config)
    float_type = np.float16 if artifact.precision == "fp16" else np.float32  # the graphs' I/O type
    den = model.denoiser()
    report: dict[str, Any] = {"groups": [], "thresholds": {k: asdict(v) for k, v in thresholds.items()}}
    for group in artifact.groups:
        lo, hi = group.interval
        inside = [f for f in all_feeds if lo <= float(f["timestep"][0]) <= hi]
        if not inside:
            raise DitqError(f"no validation step falls in group {group.group_id} {group.interval}; "
                            "validate with more --steps")
        picks = np.linspace(0, len(inside) - 1, min(config.feeds_per_group, len(inside))).round().astype(int)
        picked = [inside[i] for i in sorted(set(picks.tolist()))]
        golden = [{"sample": _call(den, f)} for f in picked]
        feeds = [{k: v.astype(float_type) if v.dtype == np.float32 else v for k, v in f.items()} for f in picked]
        cmp = compare_group(feeds=feeds, golden=golden,
                            graphs={"onnxrt-fp": artifact.path(None), "onnxrt-qdq": artifact.path(group.group_id),
                                    **({"onnxrt-qdq-fused": artifact.path(group.group_id)} if config.fused else {})},
                            fuse={"onnxrt-qdq": False, "onnxrt-qdq-fused": True},
                            output_name="sample", out_dir=Path(out) / f"group_{group.group_id}",
                            thresholds=thresholds)
        entry: dict[str, Any] = {
            "group": group.group_id, "interval": list(group.interval),
            "timesteps": [float(f["timestep"][0]) for f in feeds], "passed": cmp.passed,
            "failures": cmp.failures(),
            "metrics": {name: asdict(m) for name, m in cmp.metrics.items()},
            "polygraphy_passed": {name: gc.polygraphy_passed for name, gc in cmp.graphs.items()},
        }
        if recipe is not None:  # the torch fake-quant reference, the numerics the QDQ graph must reproduce
            fq = group_denoiser(model, recipe, group.group_id)
            outs = [_call(fq, f) for f in picked]
            entry["metrics"]["torch-fakequant"] = asdict(metrics(outs, [g["sample"] for g in golden]))
        report["groups"].append(entry)
    report["passed"] = all(g["passed"] for g in report["groups"])
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / "validation.json").write_text(json.dumps(report, indent=2, default=float) + "\n")
    return report


def format_report(report: dict[str, Any]) -> str:
    """One line per group and graph: cosine, SQNR, max error, verdict."""
    lines = [f"{'group':>5} {'interval':>12} {'graph':<16} {'cosine':>9} {'SQNR dB':>8} {'max err':>9}"]
    for g in report["groups"]:
        for name, m in g["metrics"].items():
            lines.append(f"{g['group']:>5} {str(tuple(g['interval'])):>12} {name:<16} {m['cosine']:>9.6f} "
                         f"{m['sqnr_db']:>8.2f} {m['max_abs_err']:>9.2e}")
        lines.append(f"{'':>5} {'':>12} {'-> ' + ('pass' if g['passed'] else 'FAIL: ' + '; '.join(g['failures']))}")
    return "\n".join(lines)
