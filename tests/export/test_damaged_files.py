"""Damaged artifacts are one-line user errors (exit 1), never tracebacks or a silent pass."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto

from ditq.artifacts.lint import lint_file
from ditq.artifacts.recipe import Recipe
from ditq.cli.main import main
from ditq.errors import DitqError


def _one_line_error(capsys, code: int) -> str:
    err = capsys.readouterr().err.strip()
    assert code == 1, err
    assert len(err.splitlines()) == 1 and "error" in err, err
    return err


def _rehash(onnx_dir: Path) -> None:
    body = json.loads((onnx_dir / "manifest.json").read_text())
    for g in body["groups"]:
        g["sha256"] = hashlib.sha256((onnx_dir / g["file"]).read_bytes()).hexdigest()
    (onnx_dir / "manifest.json").write_text(json.dumps(body, indent=2))


def test_recipe_without_scales(capsys, tiny_recipe_dir, tmp_path):
    bad = tmp_path / "recipe"
    shutil.copytree(tiny_recipe_dir, bad)
    (bad / "scales.safetensors").unlink()
    with pytest.raises(DitqError, match="scales.safetensors is missing"):
        Recipe.load(bad)
    code = main(["export", str(bad), "-o", str(tmp_path / "onnx")])
    assert "scales.safetensors is missing" in _one_line_error(capsys, code)
    assert not (tmp_path / "onnx").exists()


def test_lint_of_a_set_with_a_truncated_weights_bin(capsys, tiny_onnx, tmp_path):
    bad = tmp_path / "onnx"
    shutil.copytree(tiny_onnx.root, bad)
    with open(bad / "weights.bin", "r+b") as fh:
        fh.truncate(1000)
    assert "weights.bin" in _one_line_error(capsys, main(["lint", str(bad)]))


def test_lint_of_a_graph_whose_external_scale_lies_past_the_data_end(capsys, tiny_onnx, tmp_path):
    """A scale stored in weights.bin (as on larger models) that a truncated file no longer holds."""
    bad = tmp_path / "onnx"
    shutil.copytree(tiny_onnx.root, bad)
    graph = bad / "group_0.onnx"
    model = onnx.load(str(graph), load_external_data=False)
    inits = {t.name: t for t in model.graph.initializer}
    q = next(n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[1] in inits)
    scale = inits[q.input[1]]
    size = (bad / "weights.bin").stat().st_size
    scale.ClearField("raw_data"), scale.ClearField("float_data"), scale.ClearField("int32_data")
    scale.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "weights.bin"), ("offset", str(size + 4096)), ("length", "2")):
        entry = scale.external_data.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(graph))
    err = _one_line_error(capsys, main(["lint", str(graph)]))
    assert "weights.bin" in err and scale.name in err


def test_lint_of_an_empty_onnx_file(capsys, tmp_path):
    empty = tmp_path / "empty.onnx"
    empty.touch()
    with pytest.raises(DitqError, match="is empty"):
        lint_file(empty)
    assert "empty.onnx is empty" in _one_line_error(capsys, main(["lint", str(empty)]))
    assert "empty.onnx is empty" in _one_line_error(capsys, main(["lint", str(tmp_path)]))


def test_garbled_onnx_file(capsys, tmp_path):
    garbled = tmp_path / "garbled.onnx"
    garbled.write_bytes(b"\x0a\xff\xff\xff\xff\x0f not a protobuf")
    assert "garbled.onnx" in _one_line_error(capsys, main(["lint", str(garbled)]))


@pytest.mark.parametrize("damage", ["empty", "truncated"])
def test_damaged_graph_with_a_rehashed_manifest(capsys, tiny_onnx, tmp_path, damage):
    bad = tmp_path / "onnx"
    shutil.copytree(tiny_onnx.root, bad)
    graph = bad / "group_1.onnx"
    graph.write_bytes(b"" if damage == "empty" else graph.read_bytes()[:3000])
    _rehash(bad)
    assert "group_1.onnx" in _one_line_error(capsys, main(["lint", str(bad)]))
    code = main(["validate", str(bad), "-o", str(tmp_path / "v"), "--steps", "20"])
    assert "group_1.onnx" in _one_line_error(capsys, code)
    code = main(["sample", str(bad), "--steps", "2", "-o", str(tmp_path / "g.png")])
    assert "group_1.onnx" in _one_line_error(capsys, code)
