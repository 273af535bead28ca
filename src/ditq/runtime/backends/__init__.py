"""Backends behind one interface (``base.Backend``: activate / ``infer(x, timestep, cond) -> eps`` / deactivate),
the group picked by timestep (``base.GroupedBackend``), one module per backend, looked up by name in
``registry``:

- ``fake-quant`` (``fake_quant``): the folded model with fake quantization (the numerical reference of the
  exported graphs); ``torch`` is its deprecated alias;
- ``onnxruntime`` (``onnxruntime``): the exported graphs, one session per group, all created up front;
- ``tensorrt`` (``tensorrt``): the engines, one execution context per group (tensorrt imported on first use);
- ``torch-int8`` (``torch_int8``): real INT8 GEMMs in torch, one precomputed module set per group.

``open_backend(path, name, ...)`` opens an artifact directory with the backend ``name``.
"""

from ditq.runtime.backends.base import Backend, Fn, GroupedBackend, read_manifest_kind
from ditq.runtime.backends.fake_quant import fake_quant_backend, folded_transformer, group_denoiser, torch_backend
from ditq.runtime.backends.onnxruntime import onnx_feeds, onnxruntime_backend, ort_session
from ditq.runtime.backends.registry import (
    DEPRECATED_ALIASES,
    BackendEntry,
    backend_names,
    get_backend,
    open_backend,
    register,
)

__all__ = [
    "DEPRECATED_ALIASES", "Backend", "BackendEntry", "Fn", "GroupedBackend", "backend_names", "fake_quant_backend",
    "folded_transformer", "get_backend", "group_denoiser", "onnx_feeds", "onnxruntime_backend", "open_backend",
    "ort_session", "read_manifest_kind", "register", "torch_backend",
]
