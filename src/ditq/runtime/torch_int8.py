"""Moved to :mod:`ditq.runtime.backends.torch_int8` (the ``torch-int8`` backend). This module only re-exports it
for importers not yet moved (``ditq.bench.speed``); import from the new place."""

from ditq.runtime.backends.torch_int8 import (  # noqa: F401
    CudaGraphRunner,
    Int8Linear,
    TorchInt8Backend,
    int8_group_denoiser,
    int_mm,
    share_identical,
    to_device_shared,
    torch_int8_backend,
    unique_bytes,
)
