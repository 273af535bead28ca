"""The training schedule: found in every diffusers layout, never guessed, compared by what defines the axis."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ditq.errors import DitqError


def _save_pretrained_dir(out: Path, scheduler=None) -> Path:
    """A transformer saved as ``DiTTransformer2DModel.save_pretrained`` writes it, the scheduler beside it."""
    from ditq.models.tiny import tiny_dit

    tiny_dit().save_pretrained(out, safe_serialization=True)
    if scheduler is not None:
        scheduler.save_pretrained(out)  # scheduler_config.json beside config.json
    return out


def _cosine():
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")


def test_scheduler_beside_config_json_is_found(tmp_path):
    from ditq.models.loading import load_model

    model = load_model(_save_pretrained_dir(tmp_path / "m", _cosine()))
    assert (tmp_path / "m" / "config.json").is_file() and (tmp_path / "m" / "scheduler_config.json").is_file()
    assert model.scheduler_config["beta_schedule"] == "squaredcos_cap_v2"
    assert model.scheduler_source.endswith("scheduler_config.json")


def test_transformer_subfolder_given_directly_uses_the_pipeline_scheduler(tiny_model_dir):
    from ditq.models.loading import load_model

    model = load_model(tiny_model_dir / "transformer")
    assert model.scheduler_config["beta_schedule"] == "squaredcos_cap_v2"
    assert Path(model.scheduler_source) == tiny_model_dir / "scheduler" / "scheduler_config.json"


def test_pipeline_layout_and_demo_still_load(tiny_model_dir):
    from ditq.models.loading import load_model

    assert load_model(tiny_model_dir).scheduler_config["beta_schedule"] == "squaredcos_cap_v2"
    assert load_model("demo").scheduler_config["beta_schedule"] == "squaredcos_cap_v2"


def test_no_scheduler_is_refused_unless_one_is_named(tmp_path):
    from diffusers import DDIMScheduler

    from ditq.models.loading import load_model

    bare = _save_pretrained_dir(tmp_path / "bare")
    _cosine().save_pretrained(tmp_path / "scheduler")  # a neighbour's scheduler/: not this model's (no pipeline)
    with pytest.raises(DitqError, match="no scheduler config.*--scheduler-config") as err:
        load_model(bare)
    assert "\n" not in str(err.value)
    _cosine().save_pretrained(tmp_path / "sched")
    by_dir = load_model(bare, scheduler=tmp_path / "sched")
    by_file = load_model(bare, scheduler=str(tmp_path / "sched" / "scheduler_config.json"))
    by_object = load_model(bare, scheduler=DDIMScheduler.from_config(_cosine().config))
    by_dict = load_model(bare, scheduler={"num_train_timesteps": 1000, "beta_schedule": "squaredcos_cap_v2"})
    for m in (by_dir, by_file, by_object, by_dict):
        assert m.scheduler_config["beta_schedule"] == "squaredcos_cap_v2"
    with pytest.raises(DitqError, match="does not exist"):
        load_model(bare, scheduler=tmp_path / "nope.json")
    # an artifact's recorded scheduler stands in for a missing one (it is what calibration was told to use)
    assert load_model(bare, expected_scheduler=dict(_cosine().config)).scheduler_source == "recorded at calibration"


def test_expected_schedule_must_match_the_models(tiny_model_dir):
    from ditq.models.loading import load_model

    linear = {"_class_name": "DDPMScheduler", "num_train_timesteps": 1000, "beta_schedule": "linear"}
    with pytest.raises(DitqError, match=r"the recipe .*T=1000 linear 0.0001..0.02 epsilon.* uses T=1000 squaredcos"):
        load_model(tiny_model_dir, expected_scheduler=linear)


def test_training_schedule_compares_what_defines_the_axis():
    from ditq.models.schedule import describe, same_schedule, training_schedule

    cos = dict(_cosine().config)
    # sampler class, spacing and clipping are free; defaults written or not are the same schedule
    assert same_schedule(cos, {**cos, "_class_name": "DDIMScheduler", "timestep_spacing": "trailing"})
    assert same_schedule({"num_train_timesteps": 1000}, {"num_train_timesteps": 1000, "beta_schedule": "linear",
                                                         "beta_start": 0.0001, "beta_end": 0.02})
    assert same_schedule(cos, {**cos, "beta_start": 0.5})  # the cosine schedule has no beta range
    assert not same_schedule(cos, {**cos, "num_train_timesteps": 500})
    assert not same_schedule(cos, {**cos, "prediction_type": "v_prediction"})
    assert not same_schedule({"num_train_timesteps": 1000}, {"num_train_timesteps": 1000, "beta_end": 0.012})
    assert not same_schedule(cos, {**cos, "trained_betas": [0.1] * 1000})
    assert training_schedule(cos)["num_train_timesteps"] == 1000
    assert describe(cos) == "T=1000 squaredcos_cap_v2 epsilon"
    json.dumps(training_schedule(cos))
