"""W8A8-FP8: the ``W8A8_FP8_HTG`` preset, ``QuantConfig.fmt`` and ``ditq calibrate --format fp8``."""

from __future__ import annotations

import dataclasses

import pytest

import ditq
from ditq.artifacts.recipe import Recipe
from ditq.cli.calibrate import preset_method
from ditq.cli.main import main
from ditq.errors import DitqError


def test_the_fp8_preset_round_trips_and_integer_configs_keep_their_dicts():
    config = ditq.W8A8_FP8_HTG
    assert config.fmt == "fp8_e4m3" and config.method.name == "htg" and config.name == "W8A8-FP8 htg"
    assert ditq.QuantConfig.from_dict(config.to_dict()) == config
    old = ditq.W8A8_HTG.to_dict()
    assert "fmt" not in old and ditq.QuantConfig.from_dict(old).fmt == "int"
    assert ditq.preset("w8a8-fp8-htg") is config and preset_method("W8A8_FP8_HTG") == "htg"


@pytest.mark.parametrize("change", [{"w_bits": 4}, {"w_block": 32}, {"method": ditq.QDiTConfig()},
                                    {"fmt": "fp8_e5m2"}])
def test_fp8_configs_outside_w8a8_static_are_refused(change):
    with pytest.raises(DitqError):
        dataclasses.replace(ditq.W8A8_FP8_HTG, **change)


def test_calibrate_format_fp8_writes_an_fp8_recipe_with_the_api_config(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "recipe"
    assert main(["calibrate", str(tiny_model_dir), "--preset", "W8A8_FP8_HTG", "--steps", "4", "--samples", "2",
                 "--groups", "2", "-o", str(out), "-q"]) == 0
    assert "W8A8-FP8" in capsys.readouterr().out
    recipe = Recipe.load(out)
    assert recipe.formats == ("fp8_e4m3",) and recipe.num_groups == 2
    expected = dataclasses.replace(ditq.W8A8_FP8_HTG, method=ditq.HTGConfig(groups=2),
                                   calibration=ditq.CalibrationSpec(steps=4, samples=2))
    assert ditq.QuantConfig.from_dict(recipe.calibration["config"]) == expected
    # --format fp8 on the default method builds the same thing as the preset
    out2 = tmp_path / "recipe2"
    assert main(["calibrate", str(tiny_model_dir), "--format", "fp8", "--steps", "4", "--samples", "2",
                 "--groups", "2", "-o", str(out2), "-q"]) == 0
    assert Recipe.load(out2).formats == ("fp8_e4m3",)


@pytest.mark.parametrize("flags", [["--format", "fp8", "--w-bits", "4"], ["--format", "fp8", "--method", "viditq"]])
def test_calibrate_fp8_with_int_only_options_is_a_one_line_error(tiny_model_dir, tmp_path, capsys, flags):
    assert main(["calibrate", str(tiny_model_dir), *flags, "--steps", "4", "--samples", "2",
                 "-o", str(tmp_path / "r"), "-q"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("ditq calibrate: error:") and "FP8" in err and "\n" not in err
    assert not (tmp_path / "r").exists()
