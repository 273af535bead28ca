"""Model loading, the model families ditq quantizes, and their conditioning.

``save_caption_table`` and ``save_pipeline_captions`` (``models.conditioning``) are importable from here; they
load on first use, so ``import ditq.models`` stays free of torch.
"""

from __future__ import annotations

from typing import Any

_LAZY = {"save_caption_table": "ditq.models.conditioning", "save_pipeline_captions": "ditq.models.conditioning"}
__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ditq.models' has no attribute {name!r}")
