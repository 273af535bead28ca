"""Quantization methods, one module each; importing this package registers them all."""

from ditq.calibration.methods import htg, minmax, ptq4dit, qdit, smoothquant, viditq  # noqa: F401
from ditq.calibration.methods.base import METHODS, MethodConfig, method_config, register_method

__all__ = ["METHODS", "MethodConfig", "method_config", "register_method"]
