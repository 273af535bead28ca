"""The recipe records the training schedule calibration used; later stages refuse a model with another one."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from ditq.cli.main import main
from ditq.errors import DitqError

QUICK = ["--method", "minmax", "--steps", "3", "--samples", "2"]
LINEAR = {"_class_name": "DDPMScheduler", "num_train_timesteps": 1000, "beta_schedule": "linear",
          "beta_start": 0.0001, "beta_end": 0.02}


def _one_line_error(capsys, code: int) -> str:
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1, err
    return err


@pytest.fixture(scope="module")
def pretrained_dir(tmp_path_factory) -> Path:
    """``DiTTransformer2DModel.save_pretrained`` layout with the (cosine) scheduler saved beside config.json."""
    from diffusers import DDPMScheduler

    from ditq.models.tiny import tiny_dit

    out = tmp_path_factory.mktemp("pretrained") / "model"
    tiny_dit().save_pretrained(out, safe_serialization=True)
    DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2").save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def pretrained_recipe(pretrained_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("recipe") / "recipe"
    assert main(["-q", "calibrate", str(pretrained_dir), "-o", str(out), *QUICK]) == 0
    return out


def test_calibrate_uses_and_records_the_scheduler_beside_config_json(pretrained_recipe):
    from ditq.artifacts.recipe import Recipe

    body = json.loads((pretrained_recipe / "recipe.json").read_text())
    assert body["scheduler_config"]["beta_schedule"] == "squaredcos_cap_v2"
    assert body["scheduler_config"]["num_train_timesteps"] == 1000
    assert body["calibration"]["scheduler"] == "DDPMScheduler"  # not null
    assert Recipe.load(pretrained_recipe).scheduler_config["beta_schedule"] == "squaredcos_cap_v2"


def test_calibrate_refuses_a_model_without_scheduler_unless_named(capsys, tmp_path):
    from ditq.models.tiny import tiny_dit

    bare = tmp_path / "bare"
    tiny_dit().save_pretrained(bare, safe_serialization=True)
    code = main(["-q", "calibrate", str(bare), "-o", str(tmp_path / "r1"), *QUICK])
    assert "--scheduler-config" in _one_line_error(capsys, code)
    assert not (tmp_path / "r1").exists()
    (tmp_path / "linear.json").write_text(json.dumps(LINEAR))
    assert main(["-q", "calibrate", str(bare), "-o", str(tmp_path / "r2"), *QUICK,
                 "--scheduler-config", str(tmp_path / "linear.json")]) == 0
    body = json.loads((tmp_path / "r2" / "recipe.json").read_text())
    assert body["scheduler_config"]["beta_schedule"] == "linear"
    # later stages find the schedule the recipe recorded (the model directory still has none)
    assert main(["-q", "sample", str(tmp_path / "r2"), "--backend", "fake-quant", "--steps", "2", "--classes", "1",
                 "-o", str(tmp_path / "grid.png")]) == 0


def test_sample_and_export_refuse_a_model_whose_schedule_changed(capsys, pretrained_dir, pretrained_recipe, tmp_path):
    sched = pretrained_dir / "scheduler_config.json"
    original = sched.read_text()
    try:  # same weights (same sha256), another training schedule
        sched.write_text(json.dumps(LINEAR))
        code = main(["-q", "sample", str(pretrained_recipe), "--backend", "torch", "--steps", "2",
                     "-o", str(tmp_path / "grid.png")])
        err = _one_line_error(capsys, code)
        assert "squaredcos_cap_v2" in err and "linear" in err
        code = main(["-q", "export", str(pretrained_recipe), "-o", str(tmp_path / "onnx")])
        assert "training schedule" in _one_line_error(capsys, code)
    finally:
        sched.write_text(original)


def test_sample_refuses_a_named_scheduler_with_another_schedule(capsys, tiny_onnx, tmp_path):
    from diffusers import DDIMScheduler

    DDIMScheduler(num_train_timesteps=500, beta_schedule="squaredcos_cap_v2").save_pretrained(tmp_path / "s500")
    code = main(["-q", "sample", str(tiny_onnx.root), "--steps", "2", "--scheduler-config", str(tmp_path / "s500"),
                 "-o", str(tmp_path / "grid.png")])
    assert "T=500" in _one_line_error(capsys, code)
    DDIMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2").save_pretrained(tmp_path / "s1000")
    assert main(["-q", "sample", str(tiny_onnx.root), "--steps", "2", "--classes", "3", "--scheduler-config",
                 str(tmp_path / "s1000"), "-o", str(tmp_path / "grid.png")]) == 0


def test_export_and_validate_libraries_refuse_another_schedule(tiny_model, tiny_recipe, tiny_onnx, tmp_path):
    from ditq.export.onnx_export import export_onnx
    from ditq.validation.run import validate

    other = dataclasses.replace(tiny_model, scheduler_config=LINEAR)
    with pytest.raises(DitqError, match="training schedule"):
        export_onnx(other, tiny_recipe, tmp_path / "onnx", progress=False)
    with pytest.raises(DitqError, match="training schedule"):
        validate(tiny_onnx, other, tiny_recipe, tmp_path / "val")


def test_recipe_scheduler_must_agree_with_its_groups(tiny_recipe):
    bad = dataclasses.replace(tiny_recipe, scheduler_config={**tiny_recipe.scheduler_config,
                                                             "num_train_timesteps": 500})
    with pytest.raises(DitqError, match="num_train_timesteps 500"):
        bad.check()
