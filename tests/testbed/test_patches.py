"""The second testbed: 32x32 colour patches of sklearn's sample photos, and train-demo --dataset patches."""

import functools

import pytest
import torch

from ditq.cli.main import main
from ditq.testbed import patches
from ditq.testbed.patches import NUM_CLASSES, build_patch_dataset, nearest_class, train_patches

TINY = {"num_attention_heads": 2, "attention_head_dim": 8, "num_layers": 1}


@pytest.fixture(scope="module")
def small_set():
    return build_patch_dataset(96, seed=0)


def test_patch_dataset_is_deterministic_shaped_and_labelled_by_its_centres(small_set):
    again = build_patch_dataset(96, seed=0)
    assert torch.equal(small_set.images, again.images) and torch.equal(small_set.labels, again.labels)
    images, labels = small_set.images, small_set.labels
    assert images.shape == (96, 3, 32, 32) and images.dtype == torch.float32
    assert images.min() >= -1.0 and images.max() <= 1.0 and images.std() > 0.2  # real pixels, not a constant
    assert labels.dtype == torch.int64 and set(labels.tolist()) == set(range(NUM_CLASSES))
    assert torch.equal(labels, nearest_class(images, small_set.centers))  # a label is its nearest k-means centre
    assert torch.all(small_set.centers.mean(1).diff() >= 0)  # classes numbered dark to bright
    assert set(small_set.source.tolist()) == {0, 1}  # crops from both photographs
    other = build_patch_dataset(96, seed=1)
    assert not torch.equal(other.images, images)


def test_train_patches_writes_a_model_ditq_loads(tmp_path):
    from ditq.models.loading import load_model

    out = tmp_path / "patches"
    result = train_patches(out, steps=3, num_images=64, transformer_config=TINY, progress=False, threads=1)
    assert result["steps"] == 3 and 0.0 <= result["sample_cluster_agreement"] <= 1.0
    assert "final loss" in (out / "TRAINING.md").read_text()
    model = load_model(out)
    assert tuple(model.sample_shape) == (3, 32, 32) and model.num_conditions == NUM_CLASSES
    assert model.transformer.config.patch_size == 4


def test_cli_train_demo_dataset_patches(tmp_path, monkeypatch, capsys):
    tiny = functools.partial(train_patches, num_images=64, transformer_config=TINY, quality=False)
    monkeypatch.setattr(patches, "train_patches", tiny)
    out = tmp_path / "m"
    assert main(["-q", "train-demo", "--dataset", "patches", "--train-steps", "2", "--threads", "1",
                 "-o", str(out)]) == 0, capsys.readouterr().err
    assert (out / "transformer" / "config.json").is_file() and (out / "scheduler" / "scheduler_config.json").is_file()
    assert (out / "manifest.json").is_file()


@pytest.mark.parametrize("flags, named", [(["--dataset", "patches", "--arch", "pixart"], "--arch pixart"),
                                          (["--threads", "1"], "--threads 1")])
def test_cli_train_demo_refuses_what_it_would_ignore(tmp_path, capsys, flags, named):
    out = tmp_path / "m"
    assert main(["train-demo", *flags, "-o", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and named in err and not out.exists()


def test_quality_grid_skips_class_metrics_on_a_patches_model():
    from types import SimpleNamespace

    from ditq.bench.quality_grid.grid import _scorer

    scorer, note = _scorer(SimpleNamespace(sample_shape=(3, 32, 32), num_conditions=NUM_CLASSES), print)
    assert scorer is None and "not computed" in note
