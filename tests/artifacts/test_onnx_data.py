"""ditq reads a set's external initializers itself: onnx refuses a hard-linked weights.bin, which ditq triton makes."""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from ditq.artifacts.onnx_data import tensor_value


def _saved(tmp_path, values: dict[str, np.ndarray]) -> onnx.ModelProto:
    """A graph whose initializers live in ``weights.bin`` beside it; loaded back without their data."""
    inits = [numpy_helper.from_array(v, k) for k, v in values.items()]
    graph = helper.make_graph([helper.make_node("Identity", [k], [f"{k}_out"]) for k in values], "g", [],
                              [helper.make_tensor_value_info(f"{k}_out", TensorProto.UNDEFINED, None) for k in values],
                              inits)
    onnx.save(helper.make_model(graph), str(tmp_path / "g.onnx"), save_as_external_data=True,
              all_tensors_to_one_file=True, location="weights.bin", size_threshold=0)
    return onnx.load(str(tmp_path / "g.onnx"), load_external_data=False)


def test_values_are_read_from_a_hard_linked_weights_file(tmp_path):
    values = {"w": np.arange(12, dtype=np.int8).reshape(3, 4) - 6, "b": np.linspace(-1, 1, 5, dtype=np.float32)}
    model = _saved(tmp_path, values)
    os.link(tmp_path / "weights.bin", tmp_path / "elsewhere.bin")  # what ditq triton does to a set's weights.bin
    for t in model.graph.initializer:
        assert t.data_location == TensorProto.EXTERNAL
        got = tensor_value(t, tmp_path)
        assert got.dtype == values[t.name].dtype and np.array_equal(got, values[t.name])
    inline = numpy_helper.from_array(values["b"], "b")
    assert np.array_equal(tensor_value(inline, tmp_path), values["b"])


def test_a_location_outside_the_graph_dir_or_a_short_file_is_refused(tmp_path):
    model = _saved(tmp_path, {"w": np.ones((64,), np.float32)})
    t = model.graph.initializer[0]
    for e in t.external_data:
        if e.key == "location":
            e.value = "../weights.bin"
    with pytest.raises(ValueError, match="not a file inside"):
        tensor_value(t, tmp_path)
    short = tmp_path / "short"
    short.mkdir()
    model = _saved(short, {"w": np.ones((64,), np.float32)})
    with open(short / "weights.bin", "r+b") as f:
        f.truncate(100)
    with pytest.raises(ValueError, match="holds 100 of the 256 bytes"):
        tensor_value(model.graph.initializer[0], short)
