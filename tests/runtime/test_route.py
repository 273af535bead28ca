"""Group-aware routing: a batch whose rows sit at different timesteps gives what its rows give one by one."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ditq.errors import DitqError
from ditq.runtime.backends import open_backend
from ditq.runtime.backends.base import GroupedBackend
from ditq.runtime.route import RouteError, group_ids, mixed, route

INTERVALS = [(0, 299), (300, 699), (700, 999)]


def _fns():
    """Group g scales x by (g + 1) and adds the row's timestep and class: any row sent to the wrong group, or
    put back at the wrong place, changes the output."""
    return [lambda x, t, c, g=g: x * (g + 1) + t.reshape(-1, 1) + c["class_labels"].reshape(-1, 1)
            for g in range(3)]


def test_route_splits_by_group_and_keeps_row_order_numpy():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 4)).astype(np.float32)
    t = np.array([999.0, 10.0, 500.0, 20.0, 700.0, 299.6], dtype=np.float32)  # 299.6 rounds to 300: group 1
    labels = np.arange(6)
    calls = [0, 0, 0]
    out = route(_fns(), INTERVALS, x, t, {"class_labels": labels}, calls=calls)
    rows = [route(_fns(), INTERVALS, x[i:i + 1], t[i:i + 1], {"class_labels": labels[i:i + 1]}) for i in range(6)]
    np.testing.assert_array_equal(out, np.concatenate(rows))
    assert group_ids(t, INTERVALS) == [2, 0, 1, 0, 2, 1] and calls == [1, 1, 1] and mixed(t, INTERVALS)
    assert not mixed([5.0, 250.0], INTERVALS)


@pytest.mark.parametrize("bad", [1000.0, -1.0, float("nan")])
def test_route_refuses_a_timestep_outside_the_axis(bad):
    with pytest.raises(RouteError, match=r"outside the training timestep range \[0, 999\]"):
        route(_fns(), INTERVALS, np.zeros((2, 1)), np.array([5.0, bad]), {"class_labels": np.zeros(2)})


def test_grouped_backend_routes_a_mixed_batch_exactly_like_row_by_row(tiny_onnx):
    """The original backend ran a mixed batch through row 0's group; now each row gets its own group's graph."""
    backend, _ = open_backend(tiny_onnx.root, "onnxruntime", fuse=False)
    lo, hi = backend.intervals[0][0], backend.intervals[-1][1]
    t = torch.tensor([float(hi), float(lo), float(hi), float(backend.intervals[1][0]), float(lo)])
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(5, 1, 8, 8, generator=gen)
    cond = {"class_labels": torch.tensor([0, 3, 10, 7, 1])}
    out = backend(x, t, cond)
    rows = torch.cat([backend(x[i:i + 1], t[i:i + 1], {"class_labels": cond["class_labels"][i:i + 1]})
                      for i in range(5)])
    torch.testing.assert_close(out, rows, rtol=1e-5, atol=1e-5)
    same = backend(x, torch.full((5,), float(hi)), cond)  # what the old code computed for every row
    assert not torch.allclose(out[1], same[1], atol=1e-3)


def test_grouped_backend_mixed_batch_refuses_a_bad_timestep_in_one_line():
    backend = GroupedBackend("fn", INTERVALS, [lambda x, t, c: x] * 3)
    with pytest.raises(DitqError, match=r"timestep 1500.0 is outside"):
        backend(torch.zeros(2, 1), torch.tensor([5.0, 1500.0]), {})
