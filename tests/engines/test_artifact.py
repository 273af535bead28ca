"""EngineArtifact: manifest round trip, and the refusals (plan hash, TensorRT version, GPU) with faked queries."""

from __future__ import annotations

import json

import pytest

from ditq.cli.main import main
from ditq.engines import EngineArtifact, build_engines
from ditq.errors import DitqError
from ditq.runtime.backends import open_backend


@pytest.fixture
def engines(tiny_onnx, tmp_path, fake_trt):
    return build_engines(tiny_onnx, tmp_path / "engines", progress=False)


def test_round_trip(engines):
    again = EngineArtifact.load(engines.root)
    assert again == engines
    again.save()  # save -> load is stable
    assert EngineArtifact.load(engines.root) == engines


def test_tampered_plan_is_refused(engines):
    plan = engines.path(1)
    plan.write_bytes(plan.read_bytes() + b"x")
    with pytest.raises(DitqError, match="group_1.plan does not match the sha256") as exc:
        EngineArtifact.load(engines.root, check_runtime=False)
    assert "ditq build" in str(exc.value) and "\n" not in str(exc.value)


def test_missing_plan_is_refused(engines):
    engines.path(0).unlink()
    with pytest.raises(DitqError, match="group_0.plan is missing"):
        EngineArtifact.load(engines.root, check_runtime=False)


def test_other_tensorrt_version_is_refused(engines, monkeypatch):
    monkeypatch.setattr("ditq._deps.installed_tensorrt_version", lambda: "10.8.0.43")
    with pytest.raises(DitqError, match=r"built with TensorRT 10\.13\.0\.35 but 10\.8\.0\.43 is installed") as exc:
        EngineArtifact.load(engines.root)
    assert "--force" in str(exc.value) and "\n" not in str(exc.value)
    assert EngineArtifact.load(engines.root, check_runtime=False).trt_version == "10.13.0.35"


def test_other_gpu_is_refused(engines, monkeypatch):
    monkeypatch.setattr("ditq._deps.current_gpu", lambda: ("NVIDIA GeForce RTX 4090", "sm_89"))
    with pytest.raises(DitqError, match="built for Fake GPU / sm_90 but this GPU is NVIDIA GeForce RTX 4090 / sm_89"):
        EngineArtifact.load(engines.root)


def test_same_architecture_other_name_is_accepted(engines, monkeypatch):
    monkeypatch.setattr("ditq._deps.current_gpu", lambda: ("NVIDIA H100 PCIe", "sm_90"))
    assert EngineArtifact.load(engines.root).compute_capability == "sm_90"


def test_no_gpu_and_no_tensorrt_are_refused(engines, monkeypatch):
    monkeypatch.setattr("ditq._deps.current_gpu", lambda: None)
    with pytest.raises(DitqError, match="TensorRT needs an NVIDIA GPU"):
        EngineArtifact.load(engines.root)
    monkeypatch.setattr("ditq._deps.installed_tensorrt_version", lambda: None)
    with pytest.raises(DitqError, match="tensorrt is needed"):
        EngineArtifact.load(engines.root)


def test_malformed_and_wrong_kind_manifests(engines, tiny_onnx):
    body = json.loads((engines.root / "manifest.json").read_text())
    del body["gpu"]
    (engines.root / "manifest.json").write_text(json.dumps(body))
    with pytest.raises(DitqError, match="malformed"):
        EngineArtifact.load(engines.root)
    with pytest.raises(DitqError, match="holds a 'ditq.onnx' artifact, expected 'ditq.engines'"):
        EngineArtifact.load(tiny_onnx.root)


def test_tensorrt_backend_needs_an_engine_directory(tiny_onnx, engines):
    with pytest.raises(DitqError, match="needs an engine directory from `ditq build`, got a ditq.onnx"):
        open_backend(tiny_onnx.root, "tensorrt")
    with pytest.raises(DitqError, match="--fp is not available"):
        open_backend(engines.root, "tensorrt", fp=True)


def test_sample_with_tensorrt_on_a_machine_without_it(capsys, engines, tmp_path, no_tensorrt):
    code = main(["sample", str(engines.root), "--backend", "tensorrt", "-o", str(tmp_path / "grid.png")])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1 and "tensorrt is needed" in err
    assert not (tmp_path / "grid.png").exists()
