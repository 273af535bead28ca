"""ditq: timestep-grouped post-training quantization of Diffusion Transformers, ONNX -> TensorRT."""

__version__ = "0.1.0"

from ditq.errors import CheckFailed, DitqError

__all__ = ["__version__", "DitqError", "CheckFailed"]
