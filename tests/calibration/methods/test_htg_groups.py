"""HTG's ``groups="auto"``: the knee of the cost curve, raised with static INT8 activations to one group per
``timesteps_per_group`` calibration timesteps (the default calibration's 100 timesteps give 6 groups where the knee
gave 3)."""

from __future__ import annotations

import pytest

from ditq.calibration.calibrate import CalibConfig, calibrate
from ditq.calibration.methods.htg import HTGConfig
from ditq.errors import DitqError


def _groups(model, fmt: str = "int", **params) -> int:
    recipe = calibrate(model, HTGConfig(alpha_criterion="local", **params),
                       CalibConfig(steps=24, samples=2, fmt=fmt, progress=False))
    return recipe.num_groups


def test_auto_groups_follow_the_calibration_density(tiny_model):
    knee = _groups(tiny_model, timesteps_per_group=0)
    assert 1 < knee < 6  # the tiny model's cost curve has a knee; the density rule must be what raises it below
    assert _groups(tiny_model, timesteps_per_group=4) == 6  # 24 timesteps / 4
    assert _groups(tiny_model, timesteps_per_group=2) == 8  # 12, capped by max_groups
    assert _groups(tiny_model, timesteps_per_group=2, max_groups=5) == 5
    assert _groups(tiny_model) == knee  # the default (16) asks for 1 group at 24 timesteps: the knee stands
    assert _groups(tiny_model, groups=2, timesteps_per_group=4) == 2  # an explicit count is kept
    # FP8 activations keep the knee (6 groups measured no gain there), and so does act="token" (below)
    fp8_knee = _groups(tiny_model, fmt="fp8_e4m3", timesteps_per_group=0)
    assert _groups(tiny_model, fmt="fp8_e4m3", timesteps_per_group=4) == fp8_knee < 6


def test_per_token_activations_keep_the_knee(tiny_model):
    def groups(tpg: int) -> int:
        return calibrate(tiny_model, HTGConfig(act="token", alpha_criterion="global", timesteps_per_group=tpg),
                         CalibConfig(steps=24, samples=2, progress=False)).num_groups

    assert groups(4) == groups(0) < 6


def test_timesteps_per_group_is_validated():
    with pytest.raises(DitqError, match="timesteps_per_group"):
        HTGConfig(timesteps_per_group=-1)
