import itertools
import time

import numpy as np
import pytest

from ditq.calibration.groups import (
    Grouping,
    SiteRange,
    greedy_segmentation,
    group_intervals,
    group_timesteps,
    knee,
    optimal_segmentations,
    segment_costs,
)
from ditq.errors import DitqError


def random_sites(t: int, n_sites: int = 3, c: int = 16, seed: int = 0) -> list[SiteRange]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_sites):
        mid = np.cumsum(rng.normal(size=(t, c)), axis=0)  # drifting offsets over time
        half = rng.uniform(0.5, 3.0, size=(t, c))
        out.append(SiteRange(mid + half, mid - half, float(rng.uniform(0.5, 2.0))))
    return out


def regime_sites(breaks: list[int], t: int, n_sites: int = 4, c: int = 32, seed: int = 0) -> list[SiteRange]:
    """Piecewise-constant channel ranges/offsets per regime with a little noise."""
    rng = np.random.default_rng(seed)
    bounds = [0, *breaks, t]
    out = []
    for _ in range(n_sites):
        hi, lo = np.empty((t, c)), np.empty((t, c))
        for a, b in itertools.pairwise(bounds):
            mid, half = rng.normal(scale=6.0, size=c), rng.uniform(0.5, 2.0, size=c)
            hi[a:b] = mid + half + 0.02 * rng.normal(size=(b - a, c))
            lo[a:b] = mid - half - 0.02 * rng.normal(size=(b - a, c))
        out.append(SiteRange(hi, lo, 1.0))
    return out


def test_segment_costs_matches_definition():
    sites = random_sites(6, n_sites=2, c=5)
    cost = segment_costs(sites, bits=8)
    assert np.all(np.isinf(cost[np.tril_indices(6, -1)]))
    for i, j in itertools.combinations_with_replacement(range(6), 2):
        expect = 0.0
        for s in sites:
            a = ((s.ch_max[i : j + 1].max(0) - s.ch_min[i : j + 1].min(0)) / 2).max()
            expect += (j - i + 1) * (a / 127) ** 2 / 12 / s.power
        assert cost[i, j] == pytest.approx(expect, rel=1e-12)
    assert segment_costs(sites, bits=4)[0, 5] == pytest.approx(cost[0, 5] * (127 / 7) ** 2, rel=1e-12)


@pytest.mark.parametrize("t,g", [(1, 1), (5, 2), (10, 4), (17, 17), (40, 8)])
def test_intervals_tile_training_axis(t, g):
    rng = np.random.default_rng(t)
    ts = rng.choice(1000, size=t, replace=False)
    res = group_timesteps(ts, random_sites(t, seed=t), g, num_train_timesteps=1000, max_groups=8)
    assert res.n_groups == g and len(res.intervals) == g
    assert res.intervals[0][0] == 0 and res.intervals[-1][1] == 999
    assert all(lo <= hi for lo, hi in res.intervals)
    assert all(a[1] + 1 == b[0] for a, b in itertools.pairwise(res.intervals))
    assert [x for s in res.segments for x in range(s[0], s[1] + 1)] == list(range(t))
    for gid in range(g):  # each calibration timestep falls in its own group's interval
        assert all(res.group_of(x) == gid for x in res.members(gid))


def test_deterministic_and_order_independent():
    t = 30
    ts = np.arange(0, 1000, 1000 // t)[:t]
    sites = random_sites(t, seed=3)
    a = group_timesteps(ts, sites, 4, num_train_timesteps=1000)
    b = group_timesteps(ts, sites, 4, num_train_timesteps=1000)
    rev = [SiteRange(s.ch_max[::-1], s.ch_min[::-1], s.power) for s in sites]
    c = group_timesteps(ts[::-1], rev, 4, num_train_timesteps=1000)
    assert a == b == c
    assert a.timesteps == tuple(sorted(ts.tolist()))


def brute_force(cost: np.ndarray, g: int) -> float:
    n = cost.shape[0]
    best = np.inf
    for cuts in itertools.combinations(range(1, n), g - 1):
        b = [0, *cuts, n]
        best = min(best, sum(cost[i, j - 1] for i, j in itertools.pairwise(b)))
    return best


def test_dp_equals_brute_force_and_beats_greedy():
    for seed in range(5):
        cost = segment_costs(random_sites(7, seed=seed))
        costs, segs = optimal_segmentations(cost, 7)
        for g in range(1, 8):
            assert costs[g - 1] == pytest.approx(brute_force(cost, g), rel=1e-12)
            assert len(segs[g - 1]) == g
            assert sum(cost[i, j] for i, j in segs[g - 1]) == pytest.approx(costs[g - 1], rel=1e-12)
        assert all(a >= b - 1e-15 for a, b in itertools.pairwise(costs))  # non-increasing in G
    for seed in range(5):
        cost = segment_costs(random_sites(40, seed=seed))
        costs, _ = optimal_segmentations(cost, 6)
        for g in range(1, 7):
            greedy = greedy_segmentation(cost, g)
            assert len(greedy) == g
            assert costs[g - 1] <= sum(cost[i, j] for i, j in greedy) + 1e-15


def test_greedy_method_and_cost_curve():
    sites = random_sites(20, seed=9)
    ts = list(range(0, 1000, 50))
    dp = group_timesteps(ts, sites, 3, num_train_timesteps=1000, method="dp", max_groups=5)
    gr = group_timesteps(ts, sites, 3, num_train_timesteps=1000, method="greedy")
    assert len(dp.cost_curve) == 5 and dp.cost == pytest.approx(dp.cost_curve[2])
    assert gr.cost_curve == () and gr.n_groups == 3 and dp.cost <= gr.cost + 1e-15


@pytest.mark.parametrize("method", ["dp", "greedy"])
def test_auto_recovers_breakpoints(method):
    t, breaks = 60, [18, 41]
    ts = np.arange(t)[::-1] * 16 + 5  # sampler order (descending), rows below in the same order
    sites = regime_sites(breaks, t)
    rows_desc = [SiteRange(s.ch_max[::-1], s.ch_min[::-1], s.power) for s in sites]
    res = group_timesteps(ts, rows_desc, "auto", num_train_timesteps=1000, method=method)
    assert res.segments == ((0, 17), (18, 40), (41, 59))
    assert len(res.cost_curve) == 8


def test_auto_flat_gives_one_group():
    t, c = 25, 16
    rng = np.random.default_rng(1)
    hi, lo = rng.uniform(1, 2, size=c), -rng.uniform(1, 2, size=c)
    exact = [SiteRange(np.tile(hi, (t, 1)), np.tile(lo, (t, 1)), 1.0)]
    noisy = [SiteRange(np.tile(hi, (t, 1)) + 0.01 * rng.random((t, c)), np.tile(lo, (t, 1)), 1.0)]
    for sites in (exact, noisy):
        res = group_timesteps(range(0, 1000, 40), sites, "auto", num_train_timesteps=1000)
        assert res.n_groups == 1 and res.intervals == ((0, 999),)


def test_group_of_non_calibration_timesteps():
    calib = np.arange(0, 1000, 10)[::-1]  # 100-step DDPM-like, descending as visited
    res = group_timesteps(calib, random_sites(100, seed=5), 5, num_train_timesteps=1000)
    asc = np.array(res.timesteps)
    owner = np.empty(100, dtype=int)
    for gid, (i, j) in enumerate(res.segments):
        owner[i : j + 1] = gid
    queries = [range(1000), np.arange(0, 1000, 20) + 1, np.arange(0, 1000, 40) + 1, np.linspace(999, 0, 25)]
    for q in queries:
        for x in np.asarray(q, dtype=int):
            d = np.abs(asc - x)
            nearest = int(np.flatnonzero(d == d.min())[0])  # exact midpoint ties go to the lower group
            assert res.group_of(int(x)) == owner[nearest]
    with pytest.raises(DitqError):
        res.group_of(1000)
    with pytest.raises(DitqError):
        res.group_of(-1)
    with pytest.raises(DitqError):
        res.members(5)


def test_group_intervals_midpoints():
    assert group_intervals([10, 20, 31, 500], [(0, 0), (1, 2), (3, 3)], 1000) == (
        (0, 15),
        (16, 265),
        (266, 999),
    )
    with pytest.raises(DitqError):
        group_intervals([10, 20], [(0, 0)], 1000)


def test_knee():
    assert knee([100, 40, 12, 10, 9, 8.5, 8.2, 8.0]) == 3
    assert knee([5.0, 5.0, 5.0]) == 1
    assert knee([7.0]) == 1
    assert knee([10, 8, 6, 4, 2]) == 1  # straight line: all scores tie at 0 -> smallest G
    assert knee([10, 5, 0, 0, 0]) == 3
    with pytest.raises(DitqError):
        knee([])


def _base(t=10):
    return list(range(0, 1000, 100))[:t], random_sites(t, n_sites=2, c=4)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda ts, s: ([0, 0, *ts[2:]], s, 2, {}),  # duplicate
        lambda ts, s: (ts[:-1], s, 2, {}),  # shape mismatch
        lambda ts, s: (ts, [SiteRange(s[0].ch_max, s[0].ch_min[:, :3], 1.0)], 2, {}),
        lambda ts, s: (ts, s, 0, {}),
        lambda ts, s: (ts, s, "3", {}),
        lambda ts, s: (ts, s, 12, {}),
        lambda ts, s: ([*ts[:-1], 1000], s, 2, {}),
        lambda ts, s: ([-1, *ts[1:]], s, 2, {}),
        lambda ts, s: (ts, [SiteRange(np.where(s[0].ch_max > 0, np.nan, 1.0), s[0].ch_min, 1.0)], 2, {}),
        lambda ts, s: (ts, [SiteRange(s[0].ch_max, s[0].ch_min, float("inf"))], 2, {}),
        lambda ts, s: (ts, [SiteRange(s[0].ch_max, s[0].ch_min, 0.0)], 2, {}),
        lambda ts, s: (ts, [], 2, {}),
        lambda ts, s: (ts, s, 2, {"method": "kmeans"}),
        lambda ts, s: (ts, s, 2, {"max_groups": 0}),
        lambda ts, s: (ts, s, 2, {"bits": 1}),
    ],
)
def test_invalid_inputs_raise(mutate):
    ts, sites, g, kw = mutate(*_base())
    with pytest.raises(DitqError):
        group_timesteps(ts, sites, g, num_train_timesteps=1000, **kw)


def test_too_many_groups_message():
    ts, sites = _base()
    with pytest.raises(DitqError, match="cannot make 12 groups from 10 calibration timesteps"):
        group_timesteps(ts, sites, 12, num_train_timesteps=1000)


def test_segment_costs_speed():
    rng = np.random.default_rng(0)
    sites = []
    for k in range(24):
        c = 128 + 16 * k  # 128..496 channels
        x = rng.normal(size=(100, c))
        sites.append(SiteRange(x + 1, x - 1, 1.0))
    start = time.perf_counter()
    cost = segment_costs(sites)
    assert time.perf_counter() - start < 2.0
    assert cost.shape == (100, 100) and isinstance(
        group_timesteps(range(100), sites, 4, num_train_timesteps=1000), Grouping
    )


def test_moving_median_window_keeps_one_outlying_call_from_moving_a_boundary():
    from ditq.calibration.groups import moving_median

    ts = list(range(0, 1000, 25))
    hi = np.ones((40, 4))
    hi[20:] = 2.0  # two regimes: the boundary belongs between calibration timesteps 19 and 20
    hi[5, 0] = 6.0  # one outlying call (e.g. a rare token in one calibration batch)
    site = [SiteRange(hi, -hi, 1.0)]
    assert group_timesteps(ts, site, 2, num_train_timesteps=1000).segments != ((0, 19), (20, 39))
    for window in (3, 5):
        assert group_timesteps(ts, site, 2, num_train_timesteps=1000, window=window).segments == ((0, 19), (20, 39))
    ramp = np.arange(6.0)[:, None]
    assert np.array_equal(moving_median(ramp, 3), ramp)  # a trend passes unchanged; only outliers go
    assert moving_median(np.array([[0.0], [9.0], [0.0]]), 3).ravel().tolist() == [0.0, 0.0, 0.0]
    with pytest.raises(DitqError, match="odd"):
        group_timesteps(ts, site, 2, num_train_timesteps=1000, window=2)


def test_htg_passes_its_group_window_to_the_grouping(monkeypatch):
    import ditq.calibration.methods.htg as htg
    from ditq.calibration.methods import method_config

    seen = []
    monkeypatch.setattr(htg, "group_timesteps", lambda *a, **kw: seen.append(kw["window"]) or (_ for _ in ()).throw(
        RuntimeError("stop")))
    with pytest.raises(RuntimeError, match="stop"):
        method_config("htg", group_window=5).solve(type("Ctx", (), {"sites": [], "stats": {}, "timesteps": [0],
                                                                     "num_train_timesteps": 1000, "a_bits": 8,
                                                                     "fmt": "int"})())
    assert seen == [5]
    with pytest.raises(DitqError, match="odd"):
        method_config("htg", group_window=4)


def test_auto_min_groups_raises_the_knee_only_where_grouping_pays():
    t, breaks = 60, [18, 41]
    ts = np.arange(t) * 16 + 5
    sites = regime_sites(breaks, t)
    knee_only = group_timesteps(ts, sites, "auto", num_train_timesteps=1000)
    raised = group_timesteps(ts, sites, "auto", num_train_timesteps=1000, min_groups=5)
    assert knee_only.n_groups == 3 and raised.n_groups == 5
    assert list(raised.segments) == optimal_segmentations(segment_costs(sites, 8), 5)[1][4]  # the optimal 5 groups
    assert group_timesteps(ts, sites, "auto", num_train_timesteps=1000, min_groups=20).n_groups == 8  # max_groups
    assert group_timesteps(ts, sites, 2, num_train_timesteps=1000, min_groups=5).n_groups == 2  # explicit G wins
    c = 16
    flat = [SiteRange(np.tile(np.full(c, 2.0), (t, 1)), np.tile(np.full(c, -1.0), (t, 1)), 1.0)]
    assert group_timesteps(ts, flat, "auto", num_train_timesteps=1000, min_groups=5).n_groups == 1
    with pytest.raises(DitqError, match="min_groups"):
        group_timesteps(ts, sites, "auto", num_train_timesteps=1000, min_groups=0)
