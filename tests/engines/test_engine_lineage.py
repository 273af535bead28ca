"""Engines refuse an ONNX set that changed since the build, where that set is still present."""

from __future__ import annotations

import json
import shutil

import pytest

from ditq.engines import EngineArtifact, build_engines
from ditq.errors import DitqError


@pytest.fixture
def built(tiny_onnx, tmp_path, fake_trt):
    """A copy of the tiny ONNX set and the engines (fake TensorRT) built from that copy."""
    from ditq.artifacts.onnx import OnnxArtifact

    onnx_dir = tmp_path / "onnx"
    shutil.copytree(tiny_onnx.root, onnx_dir)
    engines = build_engines(OnnxArtifact.load(onnx_dir), tmp_path / "engines", progress=False)
    return onnx_dir, engines


def test_engines_refuse_a_changed_onnx_set(built):
    onnx_dir, engines = built
    body = json.loads((onnx_dir / "manifest.json").read_text())
    body["seconds"] = 1234.5  # re-exported: another manifest
    (onnx_dir / "manifest.json").write_text(json.dumps(body))
    with pytest.raises(DitqError, match="has changed since") as exc:
        EngineArtifact.load(engines.root, check_runtime=False)
    msg = str(exc.value)
    assert str(onnx_dir) in msg and str(engines.root) in msg and "ditq build" in msg and "\n" not in msg


def test_engines_whose_onnx_set_is_gone_stand_alone(built):
    onnx_dir, engines = built
    assert EngineArtifact.load(engines.root, check_runtime=False).check_parent() == onnx_dir
    shutil.rmtree(onnx_dir)
    again = EngineArtifact.load(engines.root, check_runtime=False)
    assert again.check_parent() is None and again.groups == engines.groups
