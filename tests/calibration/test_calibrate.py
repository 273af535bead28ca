import json

import pytest
import torch

from ditq.artifacts.recipe import Recipe
from ditq.calibration.calibrate import CalibConfig, calibrate
from ditq.calibration.methods import METHODS, method_config
from ditq.errors import DitqError


def test_recipe_round_trip(tiny_recipe, tmp_path):
    tiny_recipe.save(tmp_path / "r")
    again = Recipe.load(tmp_path / "r")
    assert again.body() == tiny_recipe.body()
    assert again.tensors.keys() == tiny_recipe.tensors.keys()
    assert all(torch.equal(again.tensors[k], v) for k, v in tiny_recipe.tensors.items())


def test_recipe_groups_tile_the_axis_and_honour_g(tiny_recipe):
    assert tiny_recipe.num_groups == 3
    edges = [g.interval for g in tiny_recipe.groups]
    assert edges[0][0] == 0 and edges[-1][1] == 999
    assert all(a[1] + 1 == b[0] for a, b in zip(edges, edges[1:]))
    for g in tiny_recipe.groups:  # each calibration timestep lies in its own group's interval
        assert all(g.interval[0] <= t <= g.interval[1] for t in g.timesteps)


def test_wrong_format_version_is_refused(tiny_recipe, tmp_path):
    tiny_recipe.save(tmp_path / "r")
    manifest = json.loads((tmp_path / "r" / "manifest.json").read_text())
    manifest["format_version"] = 99
    (tmp_path / "r" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DitqError, match="format_version"):
        Recipe.load(tmp_path / "r")


def test_corrupt_scales_are_refused(tiny_recipe, tmp_path):
    tiny_recipe.save(tmp_path / "r")
    (tmp_path / "r" / "scales.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(DitqError, match="damaged"):
        Recipe.load(tmp_path / "r")


def test_minmax_is_one_group_without_shift_or_scale(tiny_model):
    recipe = calibrate(tiny_model, method_config("minmax"), CalibConfig(steps=6, samples=2, progress=False))
    assert recipe.num_groups == 1 and recipe.groups[0].interval == (0, 999)
    for s in recipe.sites:
        assert torch.equal(recipe.smooth(s.name), torch.ones_like(recipe.smooth(s.name)))
        assert not recipe.shift(s.name, 0).any()


def test_more_groups_than_calibration_steps_is_an_error(tiny_model):
    with pytest.raises(DitqError, match="groups"):
        calibrate(tiny_model, method_config("htg", groups=9), CalibConfig(steps=4, samples=2, progress=False))


def test_registry_and_cli_agree():
    from ditq.cli.main import METHODS as CLI_METHODS

    assert set(CLI_METHODS) == set(METHODS)
    with pytest.raises(DitqError, match="unknown method"):
        method_config("awq")


def test_probe_recording_is_bounded_and_spread_over_the_trajectory():
    import torch

    from ditq.calibration.calibrate import _probe_recorder

    probes: list = []
    hook = _probe_recorder(probes, ("class_labels",), max_calls=8, max_rows=4)
    for step in range(100):  # a 100-step loop with CFG batches of 64 rows
        x = torch.full((64, 1, 2, 2), float(step))
        hook(None, (x,), {"timestep": torch.full((64,), float(999 - step)), "class_labels": torch.arange(64)})
    assert 4 <= len(probes) <= 8
    steps = [int(p[0][0, 0, 0, 0]) for p in probes]
    assert steps == sorted(steps) and steps[0] == 0 and steps[-1] >= 50  # evenly strided, whole trajectory
    assert len({b - a for a, b in zip(steps, steps[1:])}) == 1
    x, t, cond = probes[0]
    assert x.shape[0] == t.shape[0] == cond["class_labels"].shape[0] == 4
    assert cond["class_labels"].tolist() == [0, 21, 42, 63]  # rows spread over both CFG halves
