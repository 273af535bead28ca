"""Fast checks of the bundled digits data, classifier metrics and the packaged demo weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ditq.testbed.classifier import (
    DigitsClassifier,
    class_accuracy,
    frechet_distance,
    load_classifier,
    reference_features,
    save_classifier,
)
from ditq.testbed.demo import DEMO_TRANSFORMER_CONFIG, NULL_CLASS, demo_model_dir
from ditq.testbed.digits import load_digits_images


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    return load_digits_images()


@pytest.fixture(scope="module")
def classifier() -> DigitsClassifier:
    return load_classifier()


def test_digits_loader_shapes_and_range(digits):
    images, labels = digits
    assert images.shape == (1797, 1, 16, 16)
    assert images.dtype == torch.float32 and labels.dtype == torch.int64
    assert labels.shape == (1797,)
    assert float(images.min()) >= -1.0 and float(images.max()) <= 1.0
    assert float(images.min()) == pytest.approx(-1.0) and float(images.max()) > 0.9
    assert set(labels.tolist()) == set(range(10))
    small, _ = load_digits_images(size=8)
    assert small.shape == (1797, 1, 8, 8)


def test_packaged_classifier_accuracy(digits, classifier):
    images, labels = digits
    assert not classifier.training
    assert class_accuracy(images, labels, classifier) > 0.95
    feats = classifier.features(images[:4])
    assert feats.shape == (4, classifier.feature_dim)


def test_classifier_save_load_roundtrip(tmp_path, classifier, digits):
    images, _ = digits
    save_classifier(classifier, tmp_path)
    assert (tmp_path / "model.safetensors").is_file() and (tmp_path / "config.json").is_file()
    again = load_classifier(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(again(images[:8]), classifier(images[:8]))


def test_frechet_distance_zero_and_grows_with_shift(classifier):
    ref = reference_features(classifier)
    assert ref.shape == (1797, classifier.feature_dim)
    assert abs(frechet_distance(ref, ref)) < 1e-3
    rng = np.random.default_rng(0)
    a = rng.normal(size=(500, 8))
    b = rng.normal(size=(500, 8))
    assert frechet_distance(a, a) < 1e-6
    d_small = frechet_distance(a, b + 0.5)
    d_big = frechet_distance(a, b + 2.0)
    assert 0.0 < d_small < d_big
    assert d_big == pytest.approx(8 * 4.0, rel=0.15)  # mean shift 2 in 8 dims dominates
    # few samples in many dims (rank-deficient covariance) still gives a finite number
    assert np.isfinite(frechet_distance(rng.normal(size=(10, 64)), ref))


def test_packaged_transformer_loads_with_null_class():
    from diffusers import DDPMScheduler, DiTTransformer2DModel
    from diffusers.models.embeddings import LabelEmbedding

    root = demo_model_dir()
    assert (root / "transformer" / "diffusion_pytorch_model.safetensors").is_file()
    model = DiTTransformer2DModel.from_pretrained(root / "transformer").eval()
    for key, value in DEMO_TRANSFORMER_CONFIG.items():
        assert model.config[key] == value
    embedders = [m for m in model.modules() if isinstance(m, LabelEmbedding)]
    assert embedders
    assert all(e.embedding_table.num_embeddings == 11 for e in embedders)
    assert NULL_CLASS == 10
    scheduler = DDPMScheduler.from_pretrained(root / "scheduler")
    assert scheduler.config.num_train_timesteps == 1000
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        out = model(x, timestep=torch.tensor([10, 500]), class_labels=torch.tensor([3, NULL_CLASS])).sample
    assert out.shape == x.shape and torch.isfinite(out).all()
    total = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    assert total <= 10 * 1024 * 1024
