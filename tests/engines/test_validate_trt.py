"""``ditq validate --trt``: the wiring around Polygraphy's TrtRunner (replaced here by ONNX Runtime on the same
graph, as TensorRT cannot run on this machine; the real runner is exercised by the trt-marked tests)."""

from __future__ import annotations

import json
import shutil

import pytest

from ditq.artifacts.onnx import OnnxArtifact
from ditq.cli.main import main
from ditq.engines import build_engines
from ditq.validation.compare import run_onnxrt


@pytest.fixture
def engines(tiny_onnx, tmp_path, fake_trt, monkeypatch):
    art = build_engines(tiny_onnx, tmp_path / "engines", progress=False)
    ran = []

    def fake_run_trt(plan, feeds, output_name="sample", *, runner_name="tensorrt"):
        ran.append(plan.name)
        # exact Q/DQ arithmetic, as TensorRT computes it (and as the gated onnxrt-qdq entry runs)
        return run_onnxrt(tiny_onnx.root / plan.with_suffix(".onnx").name, feeds, output_name,
                          runner_name=runner_name, fuse=False)

    monkeypatch.setattr("ditq.validation.trt.run_trt", fake_run_trt)
    return art, ran


def test_validate_trt_adds_engine_scores_per_group(engines, tiny_onnx, tmp_path, capsys):
    engines, ran = engines
    out = tmp_path / "validation"
    assert main(["-q", "validate", str(tiny_onnx.root), "-o", str(out), "--steps", "20",
                 "--trt", str(engines.root)]) == 0
    assert ran == [g.file for g in engines.groups]
    report = json.loads((out / "validation.json").read_text())
    assert report["passed"] and report["tensorrt"]["version"] == "10.13.0.35"
    assert report["thresholds"]["tensorrt"] == report["thresholds"]["onnxrt-qdq"]
    for g in report["groups"]:
        m = g["metrics"]
        assert m["tensorrt"]["sqnr_db"] == pytest.approx(m["onnxrt-qdq"]["sqnr_db"])  # same graph here
        assert m["tensorrt-vs-onnxrt-qdq"]["sqnr_db"] == float("inf")
        assert g["polygraphy_passed"]["tensorrt"] and (out / f"group_{g['group']}" / "tensorrt.json").is_file()
    assert "tensorrt-vs-onnxrt-qdq" in capsys.readouterr().out


def test_engines_from_another_onnx_set_are_refused(engines, tiny_onnx, tmp_path, capsys):
    engines, ran = engines
    other = tmp_path / "other"
    shutil.copytree(tiny_onnx.root, other)
    body = json.loads((other / "manifest.json").read_text())
    body["seconds"] = 1234.5  # another manifest, so another parent sha256
    (other / "manifest.json").write_text(json.dumps(body))
    code = main(["-q", "validate", str(OnnxArtifact.load(other).root), "-o", str(tmp_path / "v"), "--steps", "20",
                 "--trt", str(engines.root)])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1 and "were not built from" in err and not ran
