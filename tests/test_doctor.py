"""``ditq doctor``: one line per backend, exit 0, and a reason with a fix for each one that does not work."""

import sys

from ditq.cli.doctor import checks
from ditq.cli.main import main


def test_doctor_reports_every_backend_and_why_tensorrt_is_missing(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # as on a machine without TensorRT
    assert main(["doctor"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line for line in lines[1:]}
    assert set(rows) == {"torch-cpu", "torch-cuda", "onnxruntime", "tensorrt", "polygraphy", "onnx"}
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
