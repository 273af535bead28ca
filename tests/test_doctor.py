"""``ditq doctor``: one line per backend, a reason with a fix for each one that does not work, whether the CPU
runs fused INT8 kernels exactly (VNNI); exit 0 when some backend can sample, else 3."""

import sys

import pytest

from ditq.cli.doctor import checks
from ditq.cli.main import main


def test_doctor_reports_every_backend_and_why_tensorrt_is_missing(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # as on a machine without TensorRT
    assert main(["doctor"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line for line in lines[1:]}
    assert set(rows) == {"torch-cpu", "torch-cuda", "onnxruntime", "tensorrt", "cpu-vnni", "polygraphy", "onnx",
                         "diffusers"}
    assert rows["torch-cpu"].split()[1] == "ok" and "CPUExecutionProvider" in rows["onnxruntime"]
    assert rows["tensorrt"].split()[1] == "no"
    assert "tensorrt is not installed; pip install 'ditq[trt]'" in rows["tensorrt"]


def test_stub_only_old_and_gpu_less_tensorrt_are_explained(monkeypatch):
    import types

    stub_only = types.ModuleType("tensorrt")  # what tensorrt-stubs alone leaves importable
    monkeypatch.setitem(sys.modules, "tensorrt", stub_only)
    assert "type stubs only" in dict((n, d) for n, _, d in checks())["tensorrt"]
    stub_only.__version__ = "8.6.1"
    assert "8.6.1 is too old, ditq needs >= 10.0; pip install -U 'ditq[trt]'" in \
        dict((n, d) for n, _, d in checks())["tensorrt"]
    stub_only.__version__, stub_only.Builder = "10.13.0.35", object
    name, works, detail = checks()[-1]
    torch_cuda = checks()[1]
    assert name == "tensorrt" and works == torch_cuda[1]
    if not torch_cuda[1]:
        assert detail.startswith("TensorRT 10.13.0.35 is installed, but ")


def test_doctor_fails_when_no_backend_can_sample(capsys, monkeypatch):
    for name in ("torch", "onnxruntime", "tensorrt"):
        monkeypatch.setitem(sys.modules, name, None)  # none importable
    assert main(["doctor"]) == 3
    captured = capsys.readouterr()
    assert all(line.split()[1] == "no" for line in captured.out.splitlines()[1:5])
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("ditq doctor: check failed: no backend can sample"), err


def test_doctor_fails_without_diffusers(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "diffusers", None)
    assert main(["doctor"]) == 3
    assert "diffusers is missing" in capsys.readouterr().err


@pytest.mark.parametrize("vnni, status, words", [("1", "ok", "fused INT8 kernels are exact"),
                                                  ("0", "no", "runs Q/DQ exactly")])
def test_doctor_reports_vnni(capsys, monkeypatch, vnni, status, words):
    monkeypatch.setenv("DITQ_CPU_VNNI", vnni)
    assert main(["doctor"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("cpu-vnni"))
    assert row.split()[1] == status and words in row and f"DITQ_CPU_VNNI={vnni}" in row
