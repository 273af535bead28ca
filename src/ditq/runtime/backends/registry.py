"""The backends by name: ``open_backend(path, name, ...)`` looks ``name`` up here and opens the artifact with it.

=============  ==========================================================================================
fake-quant     the folded model with fake quantization in torch (the reference); a recipe directory
onnxruntime    the exported graphs on ONNX Runtime (CPU); an ONNX directory from ``ditq export``
tensorrt       the engines (NVIDIA GPU); an engine directory from ``ditq build``
torch-int8     real INT8 GEMMs in torch (``torch._int_mm``; fast on CUDA); a recipe directory
=============  ==========================================================================================

``torch`` is a deprecated alias of ``fake-quant`` (its name before ``torch-int8`` existed). ``ditq sample
--backend`` offers these names from a static tuple (``ditq.cli.sample.BACKENDS``, so that building the parser
imports no torch), kept equal to :func:`backend_names` plus the aliases by a test.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ditq.errors import DitqError
from ditq.models.schedule import SchedulerSpec, check_schedule, scheduler_config_of
from ditq.runtime.backends import fake_quant, onnxruntime, tensorrt, torch_int8
from ditq.runtime.backends.base import GroupedBackend

log = logging.getLogger(__name__)

Opener = Callable[..., tuple[GroupedBackend, dict[str, Any]]]


@dataclass(frozen=True)
class BackendEntry:
    """A registered backend: ``open(path, *, fp, threads, fuse, scheduler) -> (backend, info)``, where ``info``
    holds what sampling needs (``conditioning``, ``sample_shape``, ``scheduler_config``, ``config``, ``kind``)."""

    name: str
    open: Opener
    reads: str  # the artifact directory it opens, for help and messages
    loads_model: bool = False  # reads a recipe and loads its model: the scheduler is checked at load
    device: str = "cpu"  # where its inputs and outputs live for a diffusers pipeline (QuantizedTransformer)


_REGISTRY: dict[str, BackendEntry] = {}
DEPRECATED_ALIASES = {"torch": fake_quant.NAME}


def register(entry: BackendEntry) -> BackendEntry:
    """Add (or replace) a backend under ``entry.name``."""
    if entry.name in DEPRECATED_ALIASES:
        raise DitqError(f"{entry.name!r} is a deprecated alias of {DEPRECATED_ALIASES[entry.name]!r}; register the "
                        "backend under another name")
    _REGISTRY[entry.name] = entry
    return entry


register(BackendEntry(fake_quant.NAME, fake_quant.open_artifact,
                      "a recipe directory (or an ONNX directory exported from one)", loads_model=True))
register(BackendEntry(onnxruntime.NAME, onnxruntime.open_artifact, "an ONNX directory from `ditq export`"))
register(BackendEntry(tensorrt.NAME, tensorrt.open_artifact, "an engine directory from `ditq build`",
                      device="cuda"))
register(BackendEntry(torch_int8.NAME, torch_int8.open_artifact,
                      "a recipe directory (or an ONNX directory exported from one)", loads_model=True))


def backend_names() -> tuple[str, ...]:
    """The registered names (deprecated aliases left out), sorted."""
    return tuple(sorted(_REGISTRY))


def get_backend(name: str) -> BackendEntry:
    """The entry for ``name``; a deprecated alias logs a one-line warning and gives its target."""
    if name in DEPRECATED_ALIASES:
        target = DEPRECATED_ALIASES[name]
        log.warning("backend %r is deprecated: it is now called %r (and 'torch-int8' runs real INT8 GEMMs); "
                    "use --backend %s", name, target, target)
        name = target
    entry = _REGISTRY.get(name)
    if entry is None:
        raise DitqError(f"unknown backend {name!r}; choose one of {', '.join(backend_names())}")
    return entry


def open_backend(path: Path, name: str, *, fp: bool = False, threads: int | None = None, fuse: bool | None = None,
                 scheduler: SchedulerSpec | None = None) -> tuple[GroupedBackend, dict[str, Any]]:
    """A backend from an artifact directory (active), and what sampling needs to know (shapes, classes, scheduler).

    ``name`` is a registered backend (:func:`backend_names`): ``onnxruntime`` reads an ONNX directory, ``tensorrt``
    an engine directory, ``fake-quant`` and ``torch-int8`` a recipe directory, or the recipe an ONNX directory was
    exported from. ``fuse``: ONNX Runtime's fused integer kernels (True) or exact Q/DQ (False); None picks fused
    only on a CPU with VNNI (``ditq.runtime.cpu``), where they are exact. ``scheduler`` (a
    ``scheduler_config.json`` path, a config or a scheduler) names the scheduler to sample with; its training
    schedule must be the one the artifact was calibrated for.
    """
    entry = get_backend(name)
    backend, info = entry.open(Path(path), fp=fp, threads=threads, fuse=fuse, scheduler=scheduler)
    conditioning = info["conditioning"]
    backend.num_classes = conditioning.num if conditioning.kind == "class" else None
    if scheduler is not None and not entry.loads_model:  # a loaded model was checked against its recipe
        named = scheduler_config_of(scheduler)
        check_schedule(info.get("scheduler_config"), named, recorded_as=str(path),
                       actual_as=f"the scheduler {scheduler if isinstance(scheduler, (str, Path)) else 'passed in'}")
        info = {**info, "scheduler_config": named}
    return backend, info
