"""What decides CPU INT8 numerics: whether ONNX Runtime's fused integer kernels can run the Q/DQ graphs exactly.

On x86 without VNNI (AVX2, or AVX-512 without ``avx512_vnni``), ONNX Runtime's fused u8s8 kernels multiply with
``vpmaddubsw``, whose int16 pair sums saturate with full-range INT8 weights (measured: ~2% relative output error on
a tiny DiT). With VNNI (``vpdpbusd``) the products accumulate in int32. So the runtime fuses Q/DQ into integer
kernels by default only where VNNI is detected, and runs the Q/DQ arithmetic exactly (float ops, slower) elsewhere.

Stdlib only (``ditq doctor`` and the CLI use it). ``DITQ_CPU_VNNI=0`` / ``1`` overrides the detection.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from pathlib import Path

from ditq.errors import DitqError

ENV_VNNI = "DITQ_CPU_VNNI"
QDQ_MODES = ("auto", "exact", "fused")
VNNI_FLAGS = ("avx512_vnni", "avx_vnni")  # /proc/cpuinfo names: AVX-512 VNNI, and the VEX-coded AVX-VNNI


@dataclass(frozen=True)
class Int8Support:
    vnni: bool | None  # None: unknown (no /proc/cpuinfo, not x86)
    detail: str  # what was found, for `ditq doctor`


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str] | None:
    """The CPU feature flags of the first processor in ``/proc/cpuinfo`` (Linux x86), or None where unreadable."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == "flags":
            return frozenset(value.split())
    return None


def int8_support(cpuinfo: Path = Path("/proc/cpuinfo")) -> Int8Support:
    """VNNI or not, from ``DITQ_CPU_VNNI`` if set, else from the CPU flags; unknown where they cannot be read."""
    override = os.environ.get(ENV_VNNI)
    if override is not None:
        if override.strip() not in ("0", "1"):
            raise DitqError(f"{ENV_VNNI} must be 0 or 1, got {override!r}; unset it to detect the CPU")
        vnni = override.strip() == "1"
        return Int8Support(vnni, f"{'VNNI' if vnni else 'no VNNI'} ({ENV_VNNI}={override.strip()})")
    flags = cpu_flags(cpuinfo)
    if flags is None:
        return Int8Support(None, f"CPU features unknown on {platform.system()} {platform.machine()} "
                                 f"(set {ENV_VNNI}=1 if the CPU has VNNI)")
    found = [f for f in VNNI_FLAGS if f in flags]
    if found:
        return Int8Support(True, f"VNNI ({', '.join(found)})")
    simd = next((f for f in ("avx512bw", "avx2", "sse4_1") if f in flags), None)
    return Int8Support(False, f"no VNNI ({simd or 'no AVX2'})")


def use_fused_qdq(mode: str = "auto") -> bool:
    """Whether ONNX Runtime should fuse Q/DQ into integer kernels: ``auto`` does only where VNNI is detected."""
    if mode not in QDQ_MODES:
        raise DitqError(f"qdq mode must be one of {', '.join(QDQ_MODES)}, got {mode!r}")
    if mode != "auto":
        return mode == "fused"
    return int8_support().vnni is True
