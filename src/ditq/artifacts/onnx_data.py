"""Reading one initializer's value from an ONNX set's external ``weights.bin`` without onnx's external-data loader.

``ditq triton`` hard-links each set's ``weights.bin`` into the model repository (one copy on disk however many group
models use it), and onnx >= 1.17 refuses to read external data from a file with more than one link or through a
symbolic link ("potential hardlink attack"): after ``ditq triton``, ``onnx.load(path)`` and
``numpy_helper.to_array(t, base_dir)`` fail on the set. ditq's own readers go through :func:`tensor_value`, which
keeps the check that matters for files ditq wrote (the data stays inside the graph's directory) and reads the
recorded byte range itself. ONNX Runtime and TensorRT's parser read external data themselves and are unaffected.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from onnx import TensorProto, numpy_helper


def tensor_value(tensor: TensorProto, base_dir: Path | str) -> np.ndarray:
    """``tensor``'s value; external data is read from ``base_dir / location`` at the recorded offset and length.

    Raises ``ValueError`` for a location outside ``base_dir`` or a byte range the file does not hold, ``OSError``
    for a file that cannot be read (what ``numpy_helper.to_array`` raises for a damaged set, so callers' handlers
    stay the same)."""
    if tensor.data_location != TensorProto.EXTERNAL:
        return numpy_helper.to_array(tensor)
    info = {e.key: e.value for e in tensor.external_data}
    root = Path(base_dir).resolve()
    location = info.get("location", "")
    path = (root / location).resolve()
    if not location or root not in path.parents:
        raise ValueError(f"external data location {location!r} of {tensor.name!r} is not a file inside {root}")
    offset = int(info.get("offset", 0))
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read(int(info["length"])) if "length" in info else f.read()
    if "length" in info and len(data) != int(info["length"]):
        raise ValueError(f"{path} holds {len(data)} of the {info['length']} bytes of {tensor.name!r} at offset "
                         f"{offset}")
    inline = TensorProto()
    inline.CopyFrom(tensor)
    inline.ClearField("external_data")
    inline.data_location = TensorProto.DEFAULT
    inline.raw_data = data
    return numpy_helper.to_array(inline)
