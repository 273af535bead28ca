"""Validation of exported ONNX sets (Polygraphy-style comparisons per timestep group).

The package is callable: ``ditq.validate(onnx_dir, ...)`` runs ``ditq.api.validate`` (a package of this name
would otherwise hide the function once any ``ditq.validate.*`` module is imported).

Args:
    onnx_dir: the ONNX set (a directory or an ``OnnxArtifact``).
    out: the report directory (default ``onnx_dir/validation``, replaced on every run).
    model: the model, where it cannot be loaded from the source the set records (an in-memory model).
    steps: sampler steps of the validation trajectory.
    thresholds: per graph name, a ``ditq.validate.compare.Thresholds`` replacing the default gate.
    trt: an engine directory to compare too (needs TensorRT).

Example::

    report = ditq.validate("onnx")
    assert report["passed"], ditq.validate_failures(report)
"""

from __future__ import annotations

import sys
import types
from typing import Any


class _CallableModule(types.ModuleType):
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from ditq.api import validate

        return validate(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
