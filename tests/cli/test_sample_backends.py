"""``ditq sample --backend``: every registered backend is reachable by name; ``torch`` still works, with a warning."""

from __future__ import annotations

import logging

import pytest

from ditq.cli.main import main


def test_sample_with_torch_int8(capsys, tiny_onnx, tmp_path):
    assert main(["-q", "sample", str(tiny_onnx.root), "--backend", "torch-int8", "--steps", "2", "--classes", "1",
                 "-o", str(tmp_path / "i8.png")]) == 0
    assert "backend torch-int8-htg" in capsys.readouterr().out and (tmp_path / "i8.png").stat().st_size > 0


def test_sample_with_fake_quant_and_its_deprecated_alias(capsys, caplog, tiny_onnx, tmp_path):
    with caplog.at_level(logging.WARNING, logger="ditq"):
        assert main(["-q", "sample", str(tiny_onnx.root), "--backend", "fake-quant", "--steps", "2", "--classes",
                     "1", "-o", str(tmp_path / "fq.png")]) == 0
    assert "backend fake-quant-htg" in capsys.readouterr().out and not caplog.records
    with caplog.at_level(logging.WARNING, logger="ditq"):
        assert main(["-q", "sample", str(tiny_onnx.root), "--backend", "torch", "--steps", "2", "--classes", "1",
                     "-o", str(tmp_path / "t.png")]) == 0
    assert "backend fake-quant-htg" in capsys.readouterr().out
    assert [r.getMessage().split(":")[0] for r in caplog.records] == ["backend 'torch' is deprecated"]
    # the same seed and backend: the same image
    assert (tmp_path / "t.png").read_bytes() == (tmp_path / "fq.png").read_bytes()


def test_torch_int8_refuses_fp_in_one_line(capsys, tiny_onnx, tmp_path):
    code = main(["sample", str(tiny_onnx.root), "--backend", "torch-int8", "--fp", "-o", str(tmp_path / "x.png")])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1 and "--backend fake-quant --fp" in err


def test_unknown_backend_is_a_usage_error(capsys, tiny_onnx, tmp_path):
    with pytest.raises(SystemExit) as exc:
        main(["sample", str(tiny_onnx.root), "--backend", "int4", "-o", str(tmp_path / "x.png")])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and len(err.splitlines()) == 1 and "'fake-quant'" in err and "'torch-int8'" in err
