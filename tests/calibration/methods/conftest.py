"""Fixtures the method tests share: the tiny model's reference graph and cached calibrations."""

from __future__ import annotations

import onnx
import pytest

METHOD_STEPS, METHOD_SAMPLES = 8, 2


@pytest.fixture(scope="session")
def tiny_reference(tiny_onnx) -> onnx.ModelProto:
    """The tiny model's FP32 reference graph, exported once (the dynamo export is the slow part of export)."""
    return onnx.load(str(tiny_onnx.path(None)))


@pytest.fixture(scope="session")
def calibrated(tiny_model):
    """``calibrated(method, w_bits, w_block=0, **params)`` -> Recipe, cached per session."""
    from ditq.calibration.calibrate import CalibConfig, calibrate
    from ditq.calibration.methods import method_config

    cache: dict = {}

    def get(method: str, w_bits: int = 8, w_block: int = 0, **params):
        key = (method, w_bits, w_block, tuple(sorted(params.items())))
        if key not in cache:
            cache[key] = calibrate(tiny_model, method_config(method, **params),
                                   CalibConfig(steps=METHOD_STEPS, samples=METHOD_SAMPLES, progress=False,
                                               w_bits=w_bits, w_block=w_block))
        return cache[key]

    return get
