"""Lazy imports of heavy optional dependencies, in the manner of Polygraphy's ``mod.lazy_import``, and the
TensorRT / GPU availability checks.

``trt`` is the one handle on TensorRT for the whole package: ``from ditq._deps import trt`` imports nothing; the
first attribute access imports ``tensorrt`` (or raises a one-line DitqError naming the install). For mypy it *is*
the ``tensorrt`` module, so every call is checked against the stubs (``mypy-trt.ini``).
"""

from __future__ import annotations

import importlib
import logging
from types import ModuleType
from typing import TYPE_CHECKING, Any

from ditq.errors import DitqError

TRT_HINT = "pip install 'ditq[trt]' (needs an NVIDIA GPU, its driver and a CUDA build of torch)"
MIN_TRT_MAJOR = 10

_HINTS = {
    "tensorrt": TRT_HINT,
    "matplotlib": "pip install matplotlib",
}


class _LazyModule(ModuleType):
    def __init__(self, name: str, hint: str) -> None:
        super().__init__(name)
        self._ditq_name = name
        self._ditq_hint = hint

    def _ditq_load(self) -> ModuleType:
        # not cached here: importlib's own cache (sys.modules) decides, so a module replaced or blocked there
        # (tests, a fake tensorrt) is what the proxy sees
        try:
            return importlib.import_module(self._ditq_name)
        except (ImportError, OSError) as err:  # OSError: installed, but a shared library cannot be loaded
            raise DitqError(f"{self._ditq_name} is needed for this step ({err}); {self._ditq_hint}") from err

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("_ditq_"):
            raise AttributeError(attr)
        return getattr(self._ditq_load(), attr)


def lazy_import(name: str) -> Any:
    """Return a proxy that imports ``name`` on first attribute access and names the install hint on failure."""
    return _LazyModule(name, _HINTS.get(name, f"pip install {name.split('.')[0]}"))


if TYPE_CHECKING:
    import tensorrt as trt
else:
    trt = lazy_import("tensorrt")


def has_module(name: str) -> bool:
    try:
        importlib.import_module(name)
    except Exception:
        return False
    return True


def installed_tensorrt_version() -> str | None:
    """The version of the importable TensorRT library, or None when there is none.

    ``tensorrt-stubs`` alone leaves an importable, empty ``tensorrt`` namespace package: that counts as none.
    """
    try:
        version = getattr(trt, "__version__", None)
        usable = hasattr(trt, "Builder")
    except DitqError:  # not installed, or libnvinfer cannot be loaded
        return None
    return version if isinstance(version, str) and usable else None


def require_tensorrt() -> str:
    """The installed TensorRT version (10.x or 11.x), or a one-line DitqError saying how to get one."""
    version = installed_tensorrt_version()
    if version is None:
        raise DitqError(f"tensorrt is needed for this step and is not installed; {TRT_HINT}")
    if trt_major(version) < MIN_TRT_MAJOR:
        raise DitqError(f"TensorRT {version} is too old, ditq needs {MIN_TRT_MAJOR}.x or later; "
                        "pip install -U 'ditq[trt]'")
    return version


def trt_major(version: str) -> int:
    try:
        return int(version.split(".")[0])
    except ValueError:
        raise DitqError(f"cannot read the TensorRT version {version!r}; reinstall tensorrt") from None


_TRT_LOGGER: Any = None
_trt_log = logging.getLogger("ditq.tensorrt")


def trt_logger() -> Any:
    """The process's one ``trt.ILogger``, for every Builder, OnnxParser and Runtime ditq creates.

    TensorRT keeps a single logger per process (the first one it is given wins), so a build's own collecting logger
    would be bypassed once a Runtime exists, and its failures would read "no error was logged". This one logger
    keeps ERROR messages in ``.errors`` (a build clears it before building and reads it after) and forwards the rest
    to ``logging`` (WARNING as warnings, INFO/VERBOSE as debug). Created again only if ``tensorrt`` itself changes
    (tests swap in a fake).
    """
    global _TRT_LOGGER
    if _TRT_LOGGER is None or not isinstance(_TRT_LOGGER, trt.ILogger):

        class CollectingLogger(trt.ILogger):
            def __init__(self) -> None:
                trt.ILogger.__init__(self)
                self.errors: list[str] = []

            def log(self, severity: trt.ILogger.Severity, msg: str) -> None:
                if severity <= trt.ILogger.Severity.ERROR:
                    self.errors.append(" ".join(msg.split()))
                    _trt_log.debug("TensorRT error: %s", msg)
                elif severity <= trt.ILogger.Severity.WARNING:
                    _trt_log.warning("TensorRT: %s", msg)
                else:
                    _trt_log.debug("TensorRT: %s", msg)

        _TRT_LOGGER = CollectingLogger()
    return _TRT_LOGGER


def current_gpu() -> tuple[str, str] | None:
    """``(name, "sm_XY")`` of the current CUDA device, or None when torch sees no CUDA GPU."""
    import torch

    if not torch.cuda.is_available():
        return None
    major, minor = torch.cuda.get_device_capability()
    return torch.cuda.get_device_name(), f"sm_{major}{minor}"


def require_gpu() -> tuple[str, str]:
    gpu = current_gpu()
    if gpu is None:
        import torch

        why = ("torch is a CPU-only build; install a CUDA build of torch" if torch.version.cuda is None
               else "no CUDA GPU is visible (check the driver and CUDA_VISIBLE_DEVICES)")
        raise DitqError(f"TensorRT needs an NVIDIA GPU: {why}")
    return gpu
