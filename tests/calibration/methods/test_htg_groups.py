"""HTG's ``groups="auto"``: the knee of the cost curve, raised to one group per ``timesteps_per_group`` calibration
timesteps (the default calibration's 100 timesteps give 6 groups where the knee gave 3)."""

from __future__ import annotations

import pytest

from ditq.calibration.calibrate import CalibConfig, calibrate
from ditq.calibration.methods.htg import HTGConfig
from ditq.errors import DitqError


def _groups(model, **params) -> int:
    recipe = calibrate(model, HTGConfig(alpha_criterion="local", **params),
                       CalibConfig(steps=24, samples=2, progress=False))
    return recipe.num_groups


def test_auto_groups_follow_the_calibration_density(tiny_model):
    knee = _groups(tiny_model, timesteps_per_group=0)
    assert 1 < knee < 6  # the tiny model's cost curve has a knee; the density rule must be what raises it below
    assert _groups(tiny_model, timesteps_per_group=4) == 6  # 24 timesteps / 4
    assert _groups(tiny_model, timesteps_per_group=2) == 8  # 12, capped by max_groups
    assert _groups(tiny_model, timesteps_per_group=2, max_groups=5) == 5
    assert _groups(tiny_model) == knee  # the default (16) asks for 1 group at 24 timesteps: the knee stands
    assert _groups(tiny_model, groups=2, timesteps_per_group=4) == 2  # an explicit count is kept


def test_timesteps_per_group_is_validated():
    with pytest.raises(DitqError, match="timesteps_per_group"):
        HTGConfig(timesteps_per_group=-1)
