"""ditq: timestep-grouped post-training quantization of Diffusion Transformers, ONNX -> TensorRT.

The public API loads on first use (``import ditq`` imports neither torch nor diffusers)::

    import ditq

    recipe = ditq.calibrate(pipe, ditq.W8A8_HTG, prompts=prompts)
    recipe.save("recipe")
    onnx_set = ditq.export_onnx(recipe, "onnx", precision="fp16", model=pipe)
    pipe.transformer = ditq.QuantizedTransformer.from_pretrained("onnx", backend="onnxruntime")
"""

from __future__ import annotations

from typing import Any

from ditq.errors import CheckFailed, DitqError

__version__ = "0.1.0"

# public name -> the module that defines it (imported on first access)
_LAZY = {
    **{name: "ditq.api" for name in ("calibrate", "export_onnx", "build_engines", "sample", "validate",
                                     "validate_failures", "load_recipe", "Sampler")},
    **{name: "ditq.config" for name in ("QuantConfig", "CalibrationSpec", "HTGConfig", "SmoothQuantConfig",
                                        "PTQ4DiTConfig", "QDiTConfig", "ViDiTQConfig", "MinMaxConfig",
                                        "MethodConfig", "PRESETS", "preset", "W8A8_HTG", "W4A8_HTG",
                                        "W8A8_SMOOTHQUANT", "W8A8_PTQ4DIT", "W4A8_QDIT", "W8A8_VIDITQ",
                                        "W8A8_MINMAX", "W8A8_FP8_HTG", "W8A8_HTG_TOKEN")},
    "Recipe": "ditq.artifacts.recipe",
    "QuantizedTransformer": "ditq.runtime.pipeline",
}
__all__ = ["__version__", "DitqError", "CheckFailed", *sorted(_LAZY)]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later accesses skip this hook
        return value
    raise AttributeError(f"module 'ditq' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
