"""The training noise schedule: where a model directory keeps it, what defines it, and refusing a mismatch.

A recipe's timestep groups are intervals on the *training* timestep axis, and that axis (and what a timestep
means) is set by the noise schedule the model was trained with: ``num_train_timesteps``, the betas
(``beta_schedule``, ``beta_start``/``beta_end`` or ``trained_betas``, ``rescale_betas_zero_snr``) and the
``prediction_type``. Calibrating or sampling with another schedule runs silently on the wrong groups, so ditq
never falls back to a default: it finds the scheduler in every layout diffusers writes, or the user names one.

Layouts searched (``model`` is what the user passed, ``transformer`` the directory holding ``config.json``):
- a pipeline directory: ``model/scheduler/scheduler_config.json``;
- a ``save_pretrained`` transformer directory with the scheduler saved beside it:
  ``transformer/scheduler_config.json``;
- a pipeline's ``transformer/`` subfolder given directly (named ``transformer``, or beside a
  ``model_index.json``): ``transformer/../scheduler/scheduler_config.json``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ditq.errors import DitqError

SCHEDULER_FILE = "scheduler_config.json"
# the keys that define the training axis, with the default every diffusers DDPM-family scheduler uses
TRAINING_DEFAULTS: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_schedule": "linear",
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "trained_betas": None,
    "prediction_type": "epsilon",
    "rescale_betas_zero_snr": False,
}
SchedulerSpec = Any  # a path (scheduler_config.json or a folder holding it), a config mapping, or a scheduler


def scheduler_candidates(model_dir: Path, transformer_dir: Path) -> list[Path]:
    """Where diffusers layouts keep the scheduler config, first match wins."""
    model_dir, transformer_dir = Path(model_dir), Path(transformer_dir)
    found = [model_dir / "scheduler" / SCHEDULER_FILE, transformer_dir / SCHEDULER_FILE]
    parent = transformer_dir.parent
    in_pipeline = transformer_dir.name == "transformer" or (parent / "model_index.json").is_file()
    if model_dir == transformer_dir and in_pipeline:
        found.append(parent / "scheduler" / SCHEDULER_FILE)  # a pipeline's transformer/ subfolder given directly
    return list(dict.fromkeys(found))


def find_scheduler_config(model_dir: Path, transformer_dir: Path) -> Path | None:
    return next((p for p in scheduler_candidates(model_dir, transformer_dir) if p.is_file()), None)


def read_scheduler_config(path: Path) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        inner = path / "scheduler" / SCHEDULER_FILE
        path = path / SCHEDULER_FILE if (path / SCHEDULER_FILE).is_file() or not inner.is_file() else inner
    if not path.is_file():
        raise DitqError(f"scheduler config {path} does not exist; pass a {SCHEDULER_FILE} (or a folder holding one)")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DitqError(f"scheduler config {path} is not valid JSON") from err
    if not isinstance(config, dict) or "num_train_timesteps" not in config:
        raise DitqError(f"{path} is not a diffusers scheduler config (no num_train_timesteps)")
    return config


def scheduler_config_of(spec: SchedulerSpec) -> dict[str, Any]:
    """The config dict of a user-named scheduler: a path, a config mapping, or a diffusers scheduler object."""
    if isinstance(spec, (str, Path)):
        return read_scheduler_config(Path(spec).expanduser())
    config = getattr(spec, "config", spec)
    if not isinstance(config, Mapping) or "num_train_timesteps" not in config:
        raise DitqError(f"a scheduler must be a {SCHEDULER_FILE} path, a scheduler config or a diffusers scheduler, "
                        f"got a {type(spec).__name__}")
    return json.loads(json.dumps(dict(config), default=_jsonable))


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def training_schedule(config: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a scheduler config that defines the training timestep axis (defaults filled in, keys that
    the chosen schedule ignores dropped), so that two configs of the same training schedule compare equal."""
    out = {k: d if config.get(k) is None else config[k] for k, d in TRAINING_DEFAULTS.items()}
    out["num_train_timesteps"] = int(out["num_train_timesteps"])
    if out["trained_betas"] is not None:
        out["trained_betas"] = [float(b) for b in out["trained_betas"]]
        for k in ("beta_schedule", "beta_start", "beta_end"):
            out.pop(k)
    elif out["beta_schedule"] == "squaredcos_cap_v2":  # the cosine schedule has no beta range
        out.pop("beta_start")
        out.pop("beta_end")
    return out


def describe(config: Mapping[str, Any]) -> str:
    s = training_schedule(config)
    betas = (f"{len(s['trained_betas'])} trained betas" if "trained_betas" in s and s["trained_betas"] is not None
             else s["beta_schedule"] + (f" {s['beta_start']:g}..{s['beta_end']:g}" if "beta_start" in s else ""))
    extra = " zero-SNR" if s["rescale_betas_zero_snr"] else ""
    return f"T={s['num_train_timesteps']} {betas}{extra} {s['prediction_type']}"


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        try:
            return math.isclose(float(a), float(b), rel_tol=1e-6, abs_tol=1e-12)
        except (TypeError, ValueError):
            return False
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return bool(a == b)


def same_schedule(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    sa, sb = training_schedule(a), training_schedule(b)
    return sa.keys() == sb.keys() and all(_same(sa[k], sb[k]) for k in sa)


def check_schedule(recorded: Mapping[str, Any] | None, actual: Mapping[str, Any], *, recorded_as: str,
                   actual_as: str) -> None:
    """Refuse, in one line naming both, when ``actual``'s training schedule is not ``recorded``'s (a recipe or
    artifact without one, written before ditq recorded it, is checked on ``num_train_timesteps`` only)."""
    if recorded is None:
        return
    if not same_schedule(recorded, actual):
        raise DitqError(f"{recorded_as} was calibrated for the training schedule {describe(recorded)} but "
                        f"{actual_as} uses {describe(actual)}; use the model and scheduler it was calibrated with, "
                        "or re-run `ditq calibrate`")
