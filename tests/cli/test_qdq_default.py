"""Exact or fused ONNX Runtime Q/DQ by default: fused integer kernels only on a CPU with VNNI (elsewhere they
saturate), detected from /proc/cpuinfo or set with DITQ_CPU_VNNI."""

import pytest

from ditq.cli.main import main
from ditq.errors import DitqError
from ditq.runtime.cpu import ENV_VNNI, cpu_flags, int8_support, use_fused_qdq


def _cpuinfo(tmp_path, flags):
    path = tmp_path / "cpuinfo"
    path.write_text(f"processor\t: 0\nmodel name\t: test\nflags\t\t: {flags}\n\nprocessor\t: 1\n")
    return path


@pytest.mark.parametrize("flags, vnni", [
    ("fpu sse4_1 avx2 fma", False),
    ("fpu sse4_1 avx2 avx512f avx512bw", False),
    ("fpu avx2 avx512f avx512bw avx512_vnni", True),
    ("fpu avx2 avx_vnni", True),
])
def test_vnni_from_cpuinfo_flags(monkeypatch, tmp_path, flags, vnni):
    monkeypatch.delenv(ENV_VNNI, raising=False)
    support = int8_support(_cpuinfo(tmp_path, flags))
    assert support.vnni is vnni and ("no VNNI" in support.detail) is not vnni


def test_unreadable_cpuinfo_is_unknown_and_means_exact(monkeypatch, tmp_path):
    monkeypatch.delenv(ENV_VNNI, raising=False)
    assert cpu_flags(tmp_path / "missing") is None
    assert int8_support(tmp_path / "missing").vnni is None
    monkeypatch.setattr("ditq.runtime.cpu.cpu_flags", lambda *a: None)
    assert use_fused_qdq("auto") is False and use_fused_qdq("fused") is True


def test_env_override(monkeypatch):
    monkeypatch.setenv(ENV_VNNI, "0")
    assert use_fused_qdq("auto") is False and use_fused_qdq("exact") is False and use_fused_qdq("fused") is True
    monkeypatch.setenv(ENV_VNNI, "1")
    assert use_fused_qdq("auto") is True and use_fused_qdq("exact") is False
    monkeypatch.setenv(ENV_VNNI, "yes")
    with pytest.raises(DitqError, match=ENV_VNNI):
        use_fused_qdq("auto")


@pytest.mark.parametrize("vnni, backend", [("0", "onnxruntime-exact"), ("1", "onnxruntime")])
def test_auto_picks_exact_without_vnni_and_fused_with_it(monkeypatch, tiny_onnx, vnni, backend):
    from ditq.runtime.pipeline import QuantizedTransformer

    monkeypatch.setenv(ENV_VNNI, vnni)
    assert QuantizedTransformer.from_pretrained(tiny_onnx.root).backend.name == backend
    assert QuantizedTransformer.from_pretrained(tiny_onnx.root, exact_qdq=True).backend.name == "onnxruntime-exact"
    assert QuantizedTransformer.from_pretrained(tiny_onnx.root, exact_qdq=False).backend.name == "onnxruntime"


@pytest.mark.parametrize("vnni, flags, backend", [
    ("0", [], "onnxruntime-exact"), ("1", [], "onnxruntime"),
    ("1", ["--qdq", "exact"], "onnxruntime-exact"), ("1", ["--exact-qdq"], "onnxruntime-exact"),
    ("0", ["--qdq", "fused"], "onnxruntime"),
])
def test_sample_qdq_default(capsys, monkeypatch, tiny_onnx, tmp_path, vnni, flags, backend):
    monkeypatch.setenv(ENV_VNNI, vnni)
    assert main(["-q", "sample", str(tiny_onnx.root), "--steps", "2", "--classes", "1", "-o",
                 str(tmp_path / "g.png"), *flags]) == 0
    assert f"backend {backend}," in capsys.readouterr().out
