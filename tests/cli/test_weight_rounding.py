"""``ditq calibrate --weight-rounding``: the choice reaches the recipe; QuantConfig dicts without it read as before."""

import json

import pytest

from ditq.cli.main import main


def test_calibrate_weight_rounding_gptq_writes_codes(capsys, tiny_model_dir, tmp_path):
    from ditq.artifacts.recipe import RECIPE_JSON, Recipe

    out = tmp_path / "r"
    assert main(["-q", "calibrate", str(tiny_model_dir), "-o", str(out), "--method", "smoothquant", "--steps", "3",
                 "--samples", "2", "--w-bits", "4", "--weight-rounding", "gptq"]) == 0
    assert "weights=gptq" in capsys.readouterr().out
    recipe = Recipe.load(out)
    assert recipe.weight_rounding == "gptq"
    assert json.loads((out / RECIPE_JSON).read_text())["calibration"]["weight_rounding"] == "gptq"
    assert all(f"{lin}.w_codes" in recipe.tensors for s in recipe.sites for lin in s.linears)


def test_weight_rounding_is_a_usage_error_when_unknown(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(["calibrate", "M", "-o", "out", "--weight-rounding", "adaround"])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and "--weight-rounding" in err and len(err.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_quant_config_carries_weight_rounding():
    from ditq.config import W8A8_HTG, QuantConfig
    from ditq.errors import DitqError

    gptq = QuantConfig(weight_rounding="gptq")
    assert QuantConfig.from_dict(gptq.to_dict()) == gptq
    assert gptq.calib_config().weight_rounding == "gptq"
    old = W8A8_HTG.to_dict()
    old.pop("weight_rounding", None)  # a dict written before the option
    assert QuantConfig.from_dict(old).weight_rounding == "nearest"
    with pytest.raises(DitqError, match="weight_rounding"):
        QuantConfig(weight_rounding="adaround")  # type: ignore[arg-type]
