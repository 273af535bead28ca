"""Checks every method's tests share (imported by the test modules of this directory)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import torch


def assert_fold_exact(model, recipe) -> None:
    """Every group's folded (and rotated) FP model equals the original within 1e-4."""
    from ditq.runtime.backends import group_denoiser

    gen = torch.Generator().manual_seed(0)
    den = model.denoiser()
    for g in recipe.groups:
        folded = group_denoiser(model, recipe, g.group_id, quantize=False)
        for t in (g.interval[0], sum(g.interval) // 2, g.interval[1]):
            x = torch.randn(4, 1, 8, 8, generator=gen)
            tt, y = torch.full((4,), float(t)), torch.arange(4) % 11
            with torch.no_grad():
                assert (folded(x, tt, y) - den(x, tt, y)).abs().max() < 1e-4


def assert_round_trip(recipe, root: Path) -> None:
    from ditq.artifacts.recipe import Recipe

    recipe.save(root)
    again = Recipe.load(root)
    assert again.body() == recipe.body()
    assert again.linear_specs == recipe.linear_specs
    assert again.dynamic_activations == recipe.dynamic_activations
    assert again.tensors.keys() == recipe.tensors.keys()
    assert all(torch.equal(again.tensors[k], v) for k, v in recipe.tensors.items())


def export_and_compare(model, recipe, reference, root: Path, *, max_rel: float = 2e-3):
    """Export, lint (static recipes: clean; dynamic: only the expected gemm-both-inputs), and check that ONNX
    Runtime's exact Q/DQ output matches the torch fake-quant backend at a timestep of every group."""
    from ditq.artifacts.lint import lint_dir
    from ditq.export.onnx_export import export_onnx
    from ditq.runtime.backends import onnxruntime_backend, torch_backend

    recipe.save(root / "recipe")
    art = export_onnx(model, recipe, root / "onnx", recipe_dir=root / "recipe", progress=False, reference=reference)
    assert bool(art.recipe["dynamic_activations"]) == recipe.dynamic_activations
    rules = {v.rule for vs in lint_dir(art.root, "onnxruntime").values() for v in vs}  # INT8 blocks, W4A8: ORT
    assert rules <= ({"gemm-both-inputs"} if recipe.dynamic_activations else set()), rules
    ort, fq = onnxruntime_backend(art, fuse=False), torch_backend(model, recipe)
    gen = torch.Generator().manual_seed(1)
    for g in recipe.groups:
        x, t = torch.randn(4, 1, 8, 8, generator=gen), torch.full((4,), sum(g.interval) / 2)
        y = {"class_labels": torch.arange(4)}
        with torch.no_grad():
            ref, out = fq(x, t, y), ort(x, t, y)
        assert float((out - ref).norm() / ref.norm()) < max_rel
    return art


def int4_weight_dqs(art) -> list[onnx.NodeProto]:
    model = onnx.load(str(art.path(0)), load_external_data=False)
    types = {t.name: t.data_type for t in model.graph.initializer}
    return [n for n in model.graph.node
            if n.op_type == "DequantizeLinear" and types.get(n.input[0]) == onnx.TensorProto.INT4]


def output_sqnr_db(model, recipe, t: float = 500.0) -> float:
    from ditq.runtime.backends import torch_backend

    gen = torch.Generator().manual_seed(2)
    x, tt, y = torch.randn(8, 1, 8, 8, generator=gen), torch.full((8,), t), {"class_labels": torch.arange(8) % 11}
    with torch.no_grad():
        ref, out = model.denoiser()(x, tt, y), torch_backend(model, recipe)(x, tt, y)
    return float(10 * np.log10(float(ref.square().sum()) / float((out - ref).square().sum())))


def htg_context(model, calib, **params):
    """The ``Context`` HTG (with ``params``) solves on when ``model`` is calibrated with ``calib`` (a CalibConfig):
    what a test scores candidates on."""
    from dataclasses import dataclass

    from ditq.calibration.calibrate import calibrate
    from ditq.calibration.methods.htg import HTGConfig

    captured = []

    @dataclass(frozen=True)
    class Capturing(HTGConfig):
        def solve(self, ctx):
            captured.append(ctx)
            return super().solve(ctx)

    calibrate(model, Capturing(**params), calib)
    return captured[0]
