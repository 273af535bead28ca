"""``ditq calibrate --[no-]bias-correction``: the choice reaches the recipe; older QuantConfig dicts read without it."""

import json

import pytest

from ditq.cli.main import main


@pytest.mark.parametrize("flag, expected", [("--no-bias-correction", False), ("--bias-correction", True)])
def test_calibrate_bias_correction_flag(capsys, tiny_model_dir, tmp_path, flag, expected):
    from ditq.artifacts.recipe import RECIPE_JSON, Recipe

    out = tmp_path / "r"
    assert main(["-q", "calibrate", str(tiny_model_dir), "-o", str(out), "--method", "minmax", "--steps", "3",
                 "--samples", "2", flag]) == 0
    assert ("bias-corrected" in capsys.readouterr().out) == expected
    recipe = Recipe.load(out)
    assert recipe.bias_correction == expected
    assert json.loads((out / RECIPE_JSON).read_text())["calibration"]["bias_correction"] == expected
    assert any(k.endswith(".bias_correction") for k in recipe.tensors) == expected


def test_quant_config_carries_bias_correction():
    from ditq.config import W8A8_HTG, QuantConfig
    from ditq.errors import DitqError

    assert not W8A8_HTG.bias_correction and not W8A8_HTG.calib_config().bias_correction
    on = QuantConfig(bias_correction=True)
    assert QuantConfig.from_dict(on.to_dict()) == on and on.calib_config().bias_correction
    old = on.to_dict()
    old.pop("bias_correction")  # a dict written before the option
    assert QuantConfig.from_dict(old).bias_correction is False
    with pytest.raises(DitqError, match="bias_correction"):
        QuantConfig(bias_correction="yes")  # type: ignore[arg-type]
