"""core.groups.TimestepGroups: the one timestep -> group lookup the recipe, backends and validation share."""

from __future__ import annotations

import math

import pytest

from ditq.core.groups import TimestepGroups
from ditq.errors import DitqError


def test_group_of_rounds_to_the_nearest_training_timestep():
    groups = TimestepGroups(((0, 365), (366, 665), (666, 999)))
    assert [groups.group_of(t) for t in (0, 365, 365.4, 365.6, 366, 665, 666, 999, 999.4)] == [0, 0, 0, 1, 1, 1,
                                                                                                 2, 2, 2]
    assert groups.num_train_timesteps == 1000 and len(groups) == 3


@pytest.mark.parametrize("t", [-1, 999.6, 1000, math.inf, -math.inf, math.nan])
def test_outside_or_not_finite_is_one_line(t):
    with pytest.raises(DitqError, match=r"outside the training timestep range \[0, 999\]"):
        TimestepGroups(((0, 499), (500, 999))).group_of(t)


@pytest.mark.parametrize("intervals", [(), ((1, 999),), ((0, 10), (12, 999)), ((0, 10), (5, 999)), ((0, -1),)])
def test_intervals_must_tile_from_zero(intervals):
    with pytest.raises(DitqError, match="contiguous"):
        TimestepGroups(intervals)
