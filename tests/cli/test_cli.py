"""The CLI in-process: user errors are one line on stderr with exit 1 and leave no output directory behind."""

import json
import shutil

import pytest

from ditq.cli.main import main


def _one_line_error(capsys, code, expected_code=1):
    err = capsys.readouterr().err.strip()
    assert code == expected_code
    assert len(err.splitlines()) == 1 and "error" in err, err
    return err


def test_missing_model_dir(capsys, tmp_path):
    code = main(["calibrate", str(tmp_path / "nope"), "-o", str(tmp_path / "out")])
    assert "does not exist" in _one_line_error(capsys, code)
    assert not (tmp_path / "out").exists()


def test_non_dit_model_dir(capsys, tmp_path):
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel"}))
    code = main(["calibrate", str(tmp_path / "unet"), "-o", str(tmp_path / "out")])
    assert "UNet2DModel" in _one_line_error(capsys, code)
    assert not (tmp_path / "out").exists()


def test_unknown_method_is_a_usage_error(capsys, tiny_model_dir, tmp_path):
    with pytest.raises(SystemExit) as exc:
        main(["calibrate", str(tiny_model_dir), "-o", str(tmp_path / "out"), "--method", "awq"])
    _one_line_error(capsys, exc.value.code, expected_code=2)
    assert not (tmp_path / "out").exists()


def test_too_many_groups(capsys, tiny_model_dir, tmp_path):
    code = main(["-q", "calibrate", str(tiny_model_dir), "-o", str(tmp_path / "out"), "--steps", "3",
                 "--samples", "1", "--groups", "5"])  # caught right after parsing, before calibrating
    assert "--groups <= 3" in _one_line_error(capsys, code, expected_code=2)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))


def test_corrupt_recipe(capsys, tiny_recipe_dir, tmp_path):
    bad = tmp_path / "recipe"
    shutil.copytree(tiny_recipe_dir, bad)
    (bad / "recipe.json").write_text("{ not json")
    code = main(["export", str(bad), "-o", str(tmp_path / "onnx")])
    assert "damaged" in _one_line_error(capsys, code)
    assert not (tmp_path / "onnx").exists()


def test_onnx_set_that_does_not_match_its_manifest(capsys, tiny_onnx, tmp_path):
    bad = tmp_path / "onnx"
    shutil.copytree(tiny_onnx.root, bad)
    (bad / "group_1.onnx").unlink()
    code = main(["sample", str(bad), "-o", str(tmp_path / "grid.png"), "--steps", "2"])
    assert "missing" in _one_line_error(capsys, code)
    assert not (tmp_path / "grid.png").exists()
    code = main(["validate", str(bad), "-o", str(tmp_path / "val")])
    _one_line_error(capsys, code)
    assert not (tmp_path / "val").exists()


def test_existing_output_is_not_overwritten(capsys, tiny_recipe_dir, tiny_model_dir):
    code = main(["calibrate", str(tiny_model_dir), "-o", str(tiny_recipe_dir)])
    assert "--force" in _one_line_error(capsys, code)


def test_lint_cli(capsys, tiny_onnx):
    assert main(["lint", str(tiny_onnx.root)]) == 0
    assert "0 violations" in capsys.readouterr().out


def test_cli_pipeline_with_sample(capsys, tiny_onnx, tmp_path):
    assert main(["-q", "sample", str(tiny_onnx.root), "--steps", "5", "--classes", "1,2", "-o",
                 str(tmp_path / "g.png")]) == 0
    assert (tmp_path / "g.png").stat().st_size > 0
    assert main(["-q", "sample", str(tiny_onnx.root), "--backend", "fake-quant", "--scheduler", "ddim", "--steps", "4",
                 "--classes", "3", "-o", str(tmp_path / "t.png")]) == 0
    code = main(["sample", str(tiny_onnx.root), "--classes", "42", "-o", str(tmp_path / "x.png")])
    assert "--classes" in _one_line_error(capsys, code)
