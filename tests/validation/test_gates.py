"""validate lints before it compares, its reference gate follows the set's float precision, every gate can be set
from the command line, and a failure names the gate (graph, metric, value, floor)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import onnx
import pytest
from onnx import numpy_helper

from ditq.cli.main import main

DEMO_FP16_REFERENCE_SQNR_DB = 42.65  # measured: the bundled demo's FP16 reference graph, worst group (run.py)


def rehash(onnx_dir: Path) -> None:
    """Re-write the manifest's graph hashes after tampering, so only lint can tell."""
    body = json.loads((onnx_dir / "manifest.json").read_text())
    for g in body["groups"]:
        g["sha256"] = hashlib.sha256((onnx_dir / g["file"]).read_bytes()).hexdigest()
    (onnx_dir / "manifest.json").write_text(json.dumps(body, indent=2))


def negate_an_activation_scale(path: Path, factor: float) -> str:
    model = onnx.load(str(path), load_external_data=False)
    inits = {t.name: t for t in model.graph.initializer}
    q = next(n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[1] in inits)
    scale = inits[q.input[1]]
    scale.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(scale) * factor, scale.name))
    onnx.save(model, str(path))
    return q.name or q.output[0]


@pytest.mark.parametrize("factor", [-1.0, 0.0])
def test_validate_lints_before_comparing(capsys, tiny_onnx, tmp_path, factor):
    bad = tmp_path / "onnx"
    shutil.copytree(tiny_onnx.root, bad)
    node = negate_an_activation_scale(bad / "group_1.onnx", factor)
    rehash(bad)
    code = main(["validate", str(bad), "-o", str(tmp_path / "v"), "--steps", "20"])
    err = capsys.readouterr().err.strip()
    assert code == 3 and len(err.splitlines()) == 1, err
    assert "scale-positive" in err and "group_1.onnx" in err and node in err and "ditq lint" in err
    assert not (tmp_path / "v").exists()  # nothing was compared


def test_the_reference_gate_follows_the_precision():
    from ditq.validation.run import default_thresholds

    fp32, fp16 = default_thresholds("fp32")["onnxrt-fp"], default_thresholds("fp16")["onnxrt-fp"]
    assert fp16.min_sqnr_db < DEMO_FP16_REFERENCE_SQNR_DB < fp32.min_sqnr_db
    assert fp16.min_cosine < fp32.min_cosine
    assert default_thresholds("fp16")["onnxrt-qdq"] == default_thresholds("fp32")["onnxrt-qdq"]


def test_fp16_set_validates_with_default_gates(tiny_model, tiny_recipe, tmp_path):
    from ditq.export.onnx_export import export_onnx
    from ditq.validation.run import default_thresholds

    art = export_onnx(tiny_model, tiny_recipe, tmp_path / "onnx16", precision="fp16", progress=False)
    assert main(["-q", "validate", str(art.root), "-o", str(tmp_path / "v"), "--steps", "20"]) == 0
    report = json.loads((tmp_path / "v" / "validation.json").read_text())
    assert report["precision"] == "fp16" and report["passed"]
    assert report["thresholds"]["onnxrt-fp"]["min_sqnr_db"] == default_thresholds("fp16")["onnxrt-fp"].min_sqnr_db


def test_a_failing_gate_names_itself(capsys, tiny_onnx, tmp_path):
    out = tmp_path / "v"
    code = main(["validate", str(tiny_onnx.root), "-o", str(out), "--steps", "20", "--min-ref-sqnr", "500",
                 "--min-ref-cosine", "0.5"])
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert code == 3 and len(err.splitlines()) == 1, err
    assert "onnxrt-fp sqnr_db" in err and "< floor 500 dB" in err and "--min-ref-sqnr" in err
    assert "cosine" not in err  # that floor was relaxed
    assert "FAIL: onnxrt-fp sqnr_db" in captured.out  # the printed summary
    report = json.loads((out / "validation.json").read_text())
    assert report["thresholds"]["onnxrt-fp"] == {"min_cosine": 0.5, "min_sqnr_db": 500.0}
    for g in report["groups"]:
        assert not g["passed"]
        (gate,) = g["failed_gates"]
        assert (gate["graph"], gate["metric"], gate["floor"]) == ("onnxrt-fp", "sqnr_db", 500.0)
        assert gate["value"] == pytest.approx(g["metrics"]["onnxrt-fp"]["sqnr_db"])


def test_the_qdq_gate_names_its_flag(capsys, tiny_onnx, tmp_path):
    code = main(["validate", str(tiny_onnx.root), "-o", str(tmp_path / "v"), "--steps", "20", "--min-sqnr",
                 "200"])
    err = capsys.readouterr().err.strip()
    assert code == 3 and "onnxrt-qdq" in err and "floor 200" in err and "--min-sqnr" in err, err
