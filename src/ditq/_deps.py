"""Lazy imports of heavy optional dependencies, in the manner of Polygraphy's ``mod.lazy_import``."""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

from ditq.errors import DitqError

_HINTS = {
    "tensorrt": "pip install 'ditq[trt]' (needs an NVIDIA GPU and driver)",
    "matplotlib": "pip install matplotlib",
}


class _LazyModule(ModuleType):
    def __init__(self, name: str, hint: str) -> None:
        super().__init__(name)
        self._ditq_name = name
        self._ditq_hint = hint
        self._ditq_module: ModuleType | None = None

    def _load(self) -> ModuleType:
        if self._ditq_module is None:
            try:
                self._ditq_module = importlib.import_module(self._ditq_name)
            except ImportError as err:
                raise DitqError(f"{self._ditq_name} is needed for this step ({err}); {self._ditq_hint}") from err
        return self._ditq_module

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("_ditq_"):
            raise AttributeError(attr)
        return getattr(self._load(), attr)


def lazy_import(name: str) -> Any:
    """Return a proxy that imports ``name`` on first attribute access and names the install hint on failure."""
    return _LazyModule(name, _HINTS.get(name, f"pip install {name.split('.')[0]}"))


def has_module(name: str) -> bool:
    try:
        importlib.import_module(name)
    except Exception:
        return False
    return True
