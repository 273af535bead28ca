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

from ditq.artifacts.lint import lint_onnx_set
from ditq.artifacts.onnx import OnnxArtifact
from ditq.artifacts.recipe import Recipe
from ditq.core.cond import Cond
from ditq.core.groups import TimestepGroups
from ditq.core.qlinear import QLinear
from ditq.core.sampler import make_scheduler, sample
from ditq.core.sites import Denoiser
from ditq.errors import CheckFailed, DitqError
from ditq.models.loading import LoadedModel
from ditq.models.schedule import check_schedule
from ditq.runtime.backends import group_denoiser
from ditq.validation.compare import GateMiss, Thresholds, compare_group, metrics

log = logging.getLogger(__name__)

# The FP reference graph (ONNX Runtime) vs the torch FP32 golden outputs, per float precision of the set. Measured
# with the default validation (50 steps, 4 samples, 3 feeds per group), worst group (SQNR over its feeds, min cosine):
#   tiny test DiT (depth 2, hidden 32): fp32 122.7 dB, cosine 1.0;       fp16 67.0 dB, cosine 0.9999999
#   bundled demo DiT (HTG, 3 groups):   fp32 118.0 dB, cosine 1.0;       fp16 42.65 dB, cosine 0.999904 (group 0,
#                                       t <= 215; its worst single feed 37.2 dB; groups 1-2: 66.3 / 69.2 dB)
# FP32 graphs differ from torch only by kernel rounding order. FP16 graphs round every activation to 11 bits and the
# error grows with depth, width and small-timestep inputs, so the FP16 floor sits ~13 dB below the demo's worst group,
# still above the INT8 error of the demo's QDQ graphs (25.4 dB): a reference no better than those fails. The QDQ
# graphs score the same in both precisions (demo: 25.4 / 44.6 / 50.9 dB fp16, 25.4 / 44.9 / 50.9 dB fp32): one floor.
REFERENCE_THRESHOLDS = {
    "fp32": Thresholds(min_cosine=0.99999, min_sqnr_db=60.0),
    "fp16": Thresholds(min_cosine=0.9995, min_sqnr_db=30.0),
}
QDQ_THRESHOLDS = Thresholds(min_cosine=0.98, min_sqnr_db=15.0)


def default_thresholds(precision: str) -> dict[str, Thresholds]:
    """The gates of a set whose float type (outside INT8) is ``precision``, per graph name."""
    if precision not in REFERENCE_THRESHOLDS:
        raise DitqError(f"no validation floors for precision {precision!r}; "
                        f"expected one of {', '.join(REFERENCE_THRESHOLDS)}")
    return {
        "onnxrt-fp": REFERENCE_THRESHOLDS[precision],
        "onnxrt-qdq": QDQ_THRESHOLDS,
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


def reference_denoiser(model: LoadedModel, recipe: Recipe, artifact: OnnxArtifact, group_id: int) -> Denoiser:
    """The torch fake-quant reference of one group as the set's graphs compute it: the recipe's quantizers, except
    that the set's ``weight_only`` Linears (INT4 exported for TensorRT as W4A16) keep float inputs."""
    den = group_denoiser(model, recipe, group_id)
    for lin in artifact.weight_only:
        module = den.m.get_submodule(lin)
        if not isinstance(module, QLinear):
            raise DitqError(f"{lin} (weight-only in {artifact.root}) is not a quantized Linear of the recipe; "
                            "re-run `ditq export`")
        module.act_scale = None
    return den


@torch.no_grad()
def validate(artifact: OnnxArtifact, model: LoadedModel, recipe: Recipe | None, out: Path,
             config: ValidateConfig = ValidateConfig()) -> dict[str, Any]:
    """Lint the set, then compare every group; write ``validation.json`` and Polygraphy files under
    ``out/group_{g}/``. ``config.thresholds`` overrides :func:`default_thresholds` per graph name.

    A set that breaks a TensorRT QDQ rule (a non-positive scale, ...) is refused with CheckFailed before any
    comparison: its numbers can look fine on ONNX Runtime while TensorRT cannot build it."""
    artifact.check_model(model)
    check_schedule(artifact.scheduler_config, model.scheduler_config, recorded_as=f"the ONNX set {artifact.root}",
                   actual_as=f"the model's scheduler ({model.scheduler_source or model.source})")
    if recipe is not None:
        recipe.check_model(model, artifact.recipe_dir)
    broken = {f: vs for f, vs in lint_onnx_set(artifact).items() if vs}
    if broken:
        file, (first, *_) = next(iter(broken.items()))
        count = sum(map(len, broken.values()))
        raise CheckFailed(f"the ONNX set {artifact.root} breaks {count} TensorRT QDQ rule(s) in {len(broken)} "
                          f"file(s) (first: {file}: [{first.rule}] {first.node}: {first.message}); validate "
                          f"compares only sets that pass `ditq lint {artifact.root}`, re-run `ditq export`")
    thresholds = {**default_thresholds(artifact.precision), **(config.thresholds or {})}
    all_feeds = trajectory_feeds(model, config)
    float_type = np.float16 if artifact.precision == "fp16" else np.float32  # the graphs' I/O type
    den = model.denoiser()
    report: dict[str, Any] = {"precision": artifact.precision, "groups": [],
                              "thresholds": {k: asdict(v) for k, v in thresholds.items()}}
    groups = TimestepGroups.of([g.interval for g in artifact.groups])  # the runtime's own lookup
    for index, group in enumerate(artifact.groups):
        inside = [f for f in all_feeds if groups.group_of(float(f["timestep"][0])) == index]
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
            "failed_gates": [asdict(miss) for miss in cmp.misses()],  # graph, metric, value, floor
            "metrics": {name: asdict(m) for name, m in cmp.metrics.items()},
            "polygraphy_passed": {name: gc.polygraphy_passed for name, gc in cmp.graphs.items()},
        }
        if recipe is not None:  # the torch fake-quant reference, the numerics the QDQ graph must reproduce
            fq = reference_denoiser(model, recipe, artifact, group.group_id)
            outs = [_call(fq, f) for f in picked]
            entry["metrics"]["torch-fakequant"] = asdict(metrics(outs, [g["sample"] for g in golden]))
        report["groups"].append(entry)
    report["passed"] = all(g["passed"] for g in report["groups"])
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / "validation.json").write_text(json.dumps(report, indent=2, default=float) + "\n")
    return report


def failure_lines(entry: dict[str, Any], flags: dict[tuple[str, str], str] | None = None) -> list[str]:
    """Why a group of the report failed: each failed gate (graph, metric, value < floor), with the flag that sets
    that floor when ``flags`` maps ``(graph, metric)`` to one, then any other failure (e.g. TensorRT's)."""
    lines, gated = [], set()
    for gate in entry.get("failed_gates", []):
        miss = GateMiss(**gate)
        flag = (flags or {}).get((miss.graph, miss.metric))
        lines.append(f"{miss}" + (f" (set with {flag})" if flag else ""))
        gated.add(miss.graph)
    return lines + [f for f in entry.get("failures", []) if f.split(":")[0] not in gated]


def format_report(report: dict[str, Any]) -> str:
    """The gates, then one line per group and graph: cosine, SQNR, max error, verdict."""
    gates = "; ".join(f"{name} cosine >= {th['min_cosine']:g}, SQNR >= {th['min_sqnr_db']:g} dB"
                      for name, th in report.get("thresholds", {}).items() if th["min_sqnr_db"] > -math.inf)
    lines = [f"gates ({report.get('precision', '?')} set): {gates}",
             f"{'group':>5} {'interval':>12} {'graph':<16} {'cosine':>9} {'SQNR dB':>8} {'max err':>9}"]
    for g in report["groups"]:
        for name, m in g["metrics"].items():
            lines.append(f"{g['group']:>5} {str(tuple(g['interval'])):>12} {name:<16} {m['cosine']:>9.6f} "
                         f"{m['sqnr_db']:>8.2f} {m['max_abs_err']:>9.2e}")
        verdict = "pass" if g["passed"] else "FAIL: " + "; ".join(failure_lines(g))
        lines.append(f"{'':>5} {'':>12} -> {verdict}")
    return "\n".join(lines)
