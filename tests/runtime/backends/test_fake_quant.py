"""``fake-quant``: the folded, fake-quantized torch model per group, opened from a recipe or its ONNX directory."""

from __future__ import annotations

import torch

from ditq.runtime.backends import open_backend
from ditq.runtime.backends.fake_quant import group_denoiser


@torch.no_grad()
def test_each_group_is_the_recipes_fake_quant_model(tiny_model, tiny_recipe, tiny_recipe_dir, tiny_onnx, feeds):
    from_recipe, info = open_backend(tiny_recipe_dir, "fake-quant")
    from_onnx, _ = open_backend(tiny_onnx.root, "fake-quant")  # the recipe the ONNX set was exported from
    assert from_recipe.name == from_onnx.name == "fake-quant-htg" and info["kind"] == "dit"
    for g, group in enumerate(tiny_recipe.groups):
        (x, t, y), = feeds([float(sum(group.interval) // 2)], batch=2, seed=g)
        ref = group_denoiser(tiny_model, tiny_recipe, g)(x, t, y)
        torch.testing.assert_close(from_recipe(x, t, y), ref, rtol=0, atol=0)
        torch.testing.assert_close(from_onnx(x, t, y), ref, rtol=0, atol=0)
    assert from_recipe.calls == [1] * tiny_recipe.num_groups


def test_fp_is_the_unquantized_model(tiny_model, tiny_recipe_dir, feeds):
    backend, _ = open_backend(tiny_recipe_dir, "fake-quant", fp=True)
    assert backend.name == "fake-quant-fp" and len(backend.fns) == 1
    (x, t, y), = feeds([300.0], batch=2)
    with torch.no_grad():
        torch.testing.assert_close(backend(x, t, y), tiny_model.denoiser().predict(x, t, y))
