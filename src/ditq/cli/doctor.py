"""``ditq doctor``: which backends work on this machine, and for each one that does not, why and what to install;
whether the CPU runs ONNX Runtime's fused INT8 kernels exactly (VNNI). Exit 3 when no backend can sample."""

from __future__ import annotations

import argparse
import importlib
import platform
import sys
from typing import Any

from ditq import __version__
from ditq.errors import CheckFailed

TRT_HINT = "pip install 'ditq[trt]' (needs an NVIDIA GPU, its driver and a CUDA build of torch)"
TORCH_CUDA_HINT = "install a CUDA build of torch (https://pytorch.org/get-started/locally/)"
MINIMUM = {"torch": (2, 4), "onnxruntime": (1, 18), "tensorrt": (10, 0), "polygraphy": (0, 53), "onnx": (1, 16),
           "diffusers": (0, 30)}
BACKENDS = ("torch-cpu", "torch-cuda", "onnxruntime", "tensorrt")  # the rows that can sample (with diffusers)


Check = tuple[str, bool, str]  # (backend, works, detail: versions when it works, else why not and the fix)


def _version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for piece in version.split("+")[0].split(".")[:2]:
        digits = "".join(c for c in piece if c.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def _import(name: str, install: str | None = None) -> tuple[Any, str]:
    """The module and its version, or None and why not (missing, too old, broken or stub-only install)."""
    install = install or f"pip install {name}"
    try:
        module = importlib.import_module(name)
    except ImportError:
        return None, f"{name} is not installed; {install}"
    except Exception as err:  # a broken install: missing shared libraries and the like
        return None, f"{name} is installed but fails to import ({' '.join(str(err).split())}); reinstall: {install}"
    version = getattr(module, "__version__", None)
    if not isinstance(version, str):  # e.g. tensorrt-stubs alone: an importable, empty namespace package
        return None, f"the importable '{name}' has no library in it (type stubs only?); {install}"
    if _version_tuple(version) < MINIMUM.get(name, (0,)):
        need = ".".join(map(str, MINIMUM[name]))
        return None, f"{name} {version} is too old, ditq needs >= {need}; {install.replace('install', 'install -U', 1)}"
    return module, version


def _torch_checks() -> list[Check]:
    t, detail = _import("torch")
    if t is None:
        return [("torch-cpu", False, detail), ("torch-cuda", False, detail)]
    checks: list[Check] = [("torch-cpu", True, f"torch {detail}, {t.get_num_threads()} threads")]
    if t.version.cuda is None:
        checks.append(("torch-cuda", False, f"torch {detail} is a CPU-only build; {TORCH_CUDA_HINT}"))
    elif not t.cuda.is_available():
        checks.append(("torch-cuda", False, f"torch {detail} (CUDA {t.version.cuda}) sees no CUDA GPU; check the "
                                            "NVIDIA driver (nvidia-smi) and CUDA_VISIBLE_DEVICES"))
    else:
        major, minor = t.cuda.get_device_capability()
        checks.append(("torch-cuda", True, f"torch {detail}, CUDA {t.version.cuda}, {t.cuda.get_device_name()} "
                                           f"(sm_{major}{minor})"))
    return checks


def _onnxruntime_check() -> Check:
    ort, detail = _import("onnxruntime")
    if ort is None:
        return "onnxruntime", False, detail
    providers = ", ".join(ort.get_available_providers())
    return "onnxruntime", True, f"onnxruntime {detail}, providers: {providers}"


def _tensorrt_check(torch_cuda: Check) -> Check:
    trt, detail = _import("tensorrt", TRT_HINT)
    if trt is None:
        return "tensorrt", False, detail
    if not torch_cuda[1]:
        return "tensorrt", False, f"TensorRT {detail} is installed, but {torch_cuda[2]}"
    return "tensorrt", True, f"TensorRT {detail} ({torch_cuda[2].split(', ')[-1]})"


def checks() -> list[Check]:
    torch_checks = _torch_checks()
    return [*torch_checks, _onnxruntime_check(), _tensorrt_check(torch_checks[1])]


def cpu_int8_check() -> Check:
    """VNNI decides CPU INT8 numerics: with it ONNX Runtime's fused integer kernels are exact, without it they
    saturate and ditq runs the Q/DQ arithmetic exactly instead (``--qdq auto``)."""
    from ditq.runtime.cpu import int8_support

    support = int8_support()
    if support.vnni:
        return "cpu-vnni", True, f"{support.detail}: ONNX Runtime's fused INT8 kernels are exact; --qdq auto uses them"
    return "cpu-vnni", False, (f"{support.detail}: ONNX Runtime's fused INT8 kernels may saturate, so --qdq auto "
                               "runs Q/DQ exactly (slower); --qdq fused forces the kernels")


def add_args(p: argparse.ArgumentParser) -> None:
    """No flags of its own (the common --debug and -q only)."""


def run(args: argparse.Namespace) -> int:
    print(f"ditq {__version__} on Python {platform.python_version()}, {platform.system()} {platform.machine()}")
    rows = [*checks(), cpu_int8_check()]
    for name in ("polygraphy", "onnx", "diffusers"):
        module, detail = _import(name)
        rows.append((name, module is not None, detail))
    for name, works, detail in rows:
        print(f"{name:<12} {'ok' if works else 'no':<3} {detail}")
    sys.stdout.flush()
    ok = {name for name, works, _ in rows if works}
    if not ok & set(BACKENDS) or "diffusers" not in ok:
        missing = "diffusers is missing" if ok & set(BACKENDS) else f"none of {', '.join(BACKENDS)} works"
        raise CheckFailed(f"no backend can sample on this machine ({missing}); install what the rows above name")
    return 0
