"""Lineage: an ONNX set is refused when the recipe it was exported from is still there but changed (re-calibrated,
re-saved), by every reader (validate, sample --backend torch, OnnxArtifact.load); a set whose recipe is gone stands
alone. A recipe is refused with a model it was not calibrated on."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest

from ditq.artifacts.onnx import OnnxArtifact
from ditq.artifacts.recipe import GroupSpec, Recipe
from ditq.cli.main import main
from ditq.errors import DitqError
from ditq.runtime.backends import open_backend


def copy_lineage(tiny_onnx, tiny_recipe_dir, tmp_path: Path) -> tuple[Path, Path]:
    """Copies of the session's recipe and ONNX set side by side (the set's manifest points at the copy)."""
    recipe, onnx_dir = tmp_path / "recipe", tmp_path / "onnx"
    shutil.copytree(tiny_recipe_dir, recipe)
    shutil.copytree(tiny_onnx.root, onnx_dir)
    manifest = json.loads((onnx_dir / "manifest.json").read_text())
    manifest["recipe"]["dir"] = "../recipe"
    (onnx_dir / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return recipe, onnx_dir


def fewer_groups(recipe: Recipe) -> Recipe:
    """The same recipe with its last two timestep groups merged (one group fewer, its tensors dropped)."""
    out = copy.deepcopy(recipe)
    *keep, a, b = out.groups
    out.groups = (*keep, GroupSpec(a.group_id, (a.interval[0], b.interval[1]), a.timesteps + b.timesteps))
    out.tensors = {k: v for k, v in out.tensors.items() if not k.startswith(f"g{b.group_id}/")}
    return out


def other_scales(recipe: Recipe) -> Recipe:
    """The same recipe (same groups) with every activation scale doubled, as a re-calibration would change it."""
    out = copy.deepcopy(recipe)
    out.tensors = {k: v * 2 if k.endswith(".act_scale") else v for k, v in out.tensors.items()}
    return out


def _refusal(capsys, code: int, *dirs: Path) -> str:
    err = capsys.readouterr().err.strip()
    assert code == 1, err
    assert len(err.splitlines()) == 1 and "error" in err, err
    for d in dirs:
        assert str(d.name) in err, err
    return err


def test_copies_are_accepted_as_they_are(tiny_onnx, tiny_recipe_dir, tmp_path):
    recipe, onnx_dir = copy_lineage(tiny_onnx, tiny_recipe_dir, tmp_path)
    art = OnnxArtifact.load(onnx_dir)
    assert art.check_parent() == recipe.resolve()
    assert art.load_parent_recipe().num_groups == len(art.groups)


def test_validate_refuses_a_recipe_recalibrated_with_another_group_count(capsys, tiny_onnx, tiny_recipe_dir,
                                                                          tiny_recipe, tmp_path):
    recipe, onnx_dir = copy_lineage(tiny_onnx, tiny_recipe_dir, tmp_path)
    fewer_groups(tiny_recipe).write(recipe)
    code = main(["validate", str(onnx_dir), "-o", str(tmp_path / "v"), "--steps", "20"])
    err = _refusal(capsys, code, recipe, onnx_dir)
    assert str(recipe) in err and "ditq export" in err
    assert not (tmp_path / "v").exists()  # refused before any comparison


def test_validate_refuses_a_recipe_with_the_same_groups_but_other_scales(capsys, tiny_onnx, tiny_recipe_dir,
                                                                        tiny_recipe, tmp_path):
    recipe, onnx_dir = copy_lineage(tiny_onnx, tiny_recipe_dir, tmp_path)
    other_scales(tiny_recipe).write(recipe)
    code = main(["validate", str(onnx_dir), "-o", str(tmp_path / "v"), "--steps", "20"])
    assert "has changed since" in _refusal(capsys, code, recipe, onnx_dir)
    assert not (tmp_path / "v").exists()


def test_sample_with_the_torch_backend_refuses_a_changed_recipe(capsys, tiny_onnx, tiny_recipe_dir, tiny_recipe,
                                                                 tmp_path):
    recipe, onnx_dir = copy_lineage(tiny_onnx, tiny_recipe_dir, tmp_path)
    other_scales(tiny_recipe).write(recipe)
    code = main(["sample", str(onnx_dir), "--backend", "fake-quant", "--steps", "2", "-o", str(tmp_path / "g.png")])
    _refusal(capsys, code, recipe, onnx_dir)
    assert not (tmp_path / "g.png").exists()


def test_every_load_checks_the_parent(tiny_onnx, tiny_recipe_dir, tiny_recipe, tmp_path):
    recipe, onnx_dir = copy_lineage(tiny_onnx, tiny_recipe_dir, tmp_path)
    other_scales(tiny_recipe).write(recipe)
    for verify in (True, False):
        with pytest.raises(DitqError, match="re-run `ditq export"):
            OnnxArtifact.load(onnx_dir, verify=verify)
    with pytest.raises(DitqError, match="has changed since"):
        open_backend(onnx_dir, "onnxruntime")
    assert OnnxArtifact.load(onnx_dir, check_parent=False).root == onnx_dir  # opt-out for tools


def test_a_set_whose_recipe_is_gone_stands_alone(tiny_onnx, tiny_recipe_dir, tmp_path):
    recipe, onnx_dir = copy_lineage(tiny_onnx, tiny_recipe_dir, tmp_path)
    shutil.rmtree(recipe)
    art = OnnxArtifact.load(onnx_dir)
    assert art.check_parent() is None and art.load_parent_recipe() is None


def test_recipe_manifest_hash_covers_the_scales(tiny_recipe, tmp_path):
    from ditq.artifacts import manifest_sha256

    tiny_recipe.save(tmp_path / "a")
    other_scales(tiny_recipe).save(tmp_path / "b")
    assert manifest_sha256(tmp_path / "a") != manifest_sha256(tmp_path / "b")


def test_a_recipe_is_refused_with_another_model(tiny_recipe_dir, tmp_path):
    recipe = tmp_path / "recipe"
    shutil.copytree(tiny_recipe_dir, recipe)
    body = json.loads((recipe / "recipe.json").read_text())
    body["model"]["sha256"] = "0" * 64  # calibrated on some other model than the one at the recorded source
    (recipe / "recipe.json").write_text(json.dumps(body))
    with pytest.raises(DitqError, match="re-run `ditq calibrate`") as exc:
        open_backend(recipe, "fake-quant")
    assert str(recipe) in str(exc.value) and body["model"]["source"] in str(exc.value)
