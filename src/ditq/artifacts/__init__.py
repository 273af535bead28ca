"""Typed artifact directories: the stages meet only through these.

- ``base``: the manifest codec (kind, format version, producer, parent hash) and hashing;
- ``outputs``: where and how every command writes (one rule: own kind only, atomic, locked, no debris);
- ``recipe`` (``ditq.recipe``), ``onnx`` (``ditq.onnx``), ``engines`` (``ditq.engines``): the three artifacts;
- ``lint``: the TensorRT explicit-quantization rules an ONNX set must satisfy.
"""

from ditq.artifacts.base import (
    FORMAT_VERSION,
    MANIFEST,
    manifest_kind,
    manifest_sha256,
    read_manifest,
    sha256_bytes,
    sha256_file,
    write_json,
    write_manifest,
)

__all__ = ["FORMAT_VERSION", "MANIFEST", "manifest_kind", "manifest_sha256", "read_manifest", "sha256_bytes",
           "sha256_file", "write_json", "write_manifest"]
