"""Shared tiny artifacts: a seeded tiny DiT directory, an HTG recipe and its ONNX set, built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

TINY_STEPS = 20


def pytest_configure(config: pytest.Config) -> None:
    torch.set_num_threads(1)  # tiny models: thread hand-offs cost more than they save


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from ditq.models.tiny import save_tiny_model_dir

    return save_tiny_model_dir(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir: Path):
    from ditq.models.loading import load_model

    return load_model(tiny_model_dir)


@pytest.fixture(scope="session")
def tiny_recipe_dir(tiny_model, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from ditq.calibration.calibrate import CalibConfig, calibrate
    from ditq.calibration.methods import method_config

    recipe = calibrate(tiny_model, method_config("htg", groups=3),
                       CalibConfig(steps=TINY_STEPS, samples=4, progress=False))
    out = tmp_path_factory.mktemp("recipe") / "recipe"
    recipe.save(out)
    return out


@pytest.fixture(scope="session")
def tiny_recipe(tiny_recipe_dir: Path):
    from ditq.artifacts.recipe import Recipe

    return Recipe.load(tiny_recipe_dir)


@pytest.fixture(scope="session")
def tiny_onnx(tiny_model, tiny_recipe, tiny_recipe_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    from ditq.export.onnx_export import export_onnx

    return export_onnx(tiny_model, tiny_recipe, tmp_path_factory.mktemp("onnx") / "onnx",
                       recipe_dir=tiny_recipe_dir, progress=False)


@pytest.fixture
def feeds():
    """``feeds(timesteps)`` -> model inputs (x, t, cond) at those timesteps, CFG null label included."""

    def make(timesteps: list[float], batch: int = 4, seed: int = 0) -> list[tuple[torch.Tensor, ...]]:
        gen = torch.Generator().manual_seed(seed)
        return [(torch.randn(batch, 1, 8, 8, generator=gen), torch.full((batch,), float(t)),
                 {"class_labels": torch.arange(batch) % 11}) for t in timesteps]

    return make


@pytest.fixture(scope="session")
def pixart_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from ditq.models.tiny import save_tiny_pixart_dir

    return save_tiny_pixart_dir(tmp_path_factory.mktemp("pixart") / "model")


@pytest.fixture(scope="session")
def pixart_model(pixart_dir: Path):
    from ditq.models.loading import load_model

    return load_model(pixart_dir)


@pytest.fixture(scope="session")
def pixart_recipe_dir(pixart_model, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from ditq.calibration.calibrate import CalibConfig, calibrate
    from ditq.calibration.methods import method_config

    recipe = calibrate(pixart_model, method_config("htg", groups=3),
                       CalibConfig(steps=TINY_STEPS, samples=6, progress=False))
    out = tmp_path_factory.mktemp("pixart_recipe") / "recipe"
    recipe.save(out)
    return out


@pytest.fixture(scope="session")
def pixart_onnx(pixart_model, pixart_recipe_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    from ditq.artifacts.recipe import Recipe
    from ditq.export.onnx_export import export_onnx

    return export_onnx(pixart_model, Recipe.load(pixart_recipe_dir), tmp_path_factory.mktemp("pixart_onnx") / "onnx",
                       recipe_dir=pixart_recipe_dir, progress=False)
