"""`ditq calibrate --preset NAME` builds the same QuantConfig as the Python API, flags overriding its fields."""

from __future__ import annotations

import dataclasses

import pytest

import ditq
from ditq.artifacts.recipe import Recipe
from ditq.cli.main import main


def test_calibrate_with_a_preset_records_the_same_config_as_the_api(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "recipe"
    assert main(["calibrate", str(tiny_model_dir), "--preset", "w8a8_minmax", "--steps", "4", "--samples", "2",
                 "--w-bits", "4", "-o", str(out), "-q"]) == 0
    recipe = Recipe.load(out)
    expected = dataclasses.replace(ditq.W8A8_MINMAX, w_bits=4,
                                   calibration=ditq.CalibrationSpec(steps=4, samples=2))
    assert recipe.method == "minmax" and recipe.w_bits == 4
    assert ditq.QuantConfig.from_dict(recipe.calibration["config"]) == expected
    assert recipe.calibration["model_loader"] == "directory"
    # the recipe of a model directory exports from the source it records, no model= needed
    art = ditq.export_onnx(out, tmp_path / "onnx")
    assert art.check_parent() == out.resolve()


def test_an_unknown_preset_is_a_usage_error(tiny_model_dir, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["calibrate", str(tiny_model_dir), "--preset", "W2A2", "-o", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and "--preset" in err and "W8A8_HTG" in err and "\n" not in err
