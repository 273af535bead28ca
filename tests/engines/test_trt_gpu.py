"""On a machine with TensorRT and an NVIDIA GPU: build the tiny DiT's engines, run them against ONNX Runtime,
sample and validate through the CLI. Skipped elsewhere, with the reason (CI here has no GPU)."""

from __future__ import annotations

import json

import pytest
import torch

from ditq.cli.main import main
from ditq.engines import BuildConfig, EngineArtifact, build_engines
from ditq.runtime.backends import onnxruntime_backend

pytestmark = pytest.mark.trt


def _sqnr_db(out: torch.Tensor, ref: torch.Tensor) -> float:
    noise = float(((out.double() - ref.double()) ** 2).sum())
    return float("inf") if noise == 0 else 10.0 * torch.log10(((ref.double() ** 2).sum()) / noise).item()


@pytest.fixture(scope="module")
def real_engines(trt_ready, tiny_onnx, tmp_path_factory) -> EngineArtifact:
    return build_engines(tiny_onnx, tmp_path_factory.mktemp("trt") / "engines",
                         BuildConfig(min_batch=1, opt_batch=8, max_batch=16, opt_level=1), progress=False)


def test_manifest_records_this_machine(real_engines):
    import tensorrt

    major, minor = torch.cuda.get_device_capability()
    assert real_engines.trt_version == tensorrt.__version__
    assert real_engines.compute_capability == f"sm_{major}{minor}"
    assert (real_engines.root / "timing.cache").stat().st_size > 0
    assert EngineArtifact.load(real_engines.root) == real_engines


def test_engines_match_onnxruntime_in_every_group(real_engines, tiny_onnx, feeds):
    from ditq.runtime.backends.tensorrt import tensorrt_backend

    trt_backend, ort_backend = tensorrt_backend(real_engines.root), onnxruntime_backend(tiny_onnx, fuse=False)
    for lo, hi in tiny_onnx.intervals:
        for batch in (1, 4, 16):
            ((x, t, y),) = feeds([(lo + hi) / 2], batch=batch)
            out = trt_backend(x, t, y)
            assert out.device.type == "cpu" and out.dtype == torch.float32 and out.shape == x.shape
            assert _sqnr_db(out, ort_backend(x, t, y)) > 25.0
    assert trt_backend.calls == [3] * len(tiny_onnx.groups)  # the group switch only picked a context


def test_cuda_graphs_replay_the_same_outputs(real_engines, feeds):
    from ditq.runtime.backends.tensorrt import tensorrt_backend

    plain, graphed = tensorrt_backend(real_engines.root), tensorrt_backend(real_engines.root, cuda_graphs=True)
    timesteps = [10.0, 500.0, 990.0]
    # batch sizes alternate on every group's context: each replay must run with its own batch's shapes and addresses
    for batch in (4, 2, 4, 8, 2, 8, 4):
        for x, t, y in feeds(timesteps, batch=batch):  # the first round at a batch captures, later ones replay
            torch.testing.assert_close(graphed(x, t, y), plain(x, t, y), rtol=1e-4, atol=1e-5)
    assert all(set(runner.graphs) == {2, 4, 8} for g, runner in enumerate(graphed.fns) if graphed.calls[g])


def test_out_of_profile_batch_is_a_user_error(real_engines, feeds):
    from ditq.errors import DitqError
    from ditq.runtime.backends.tensorrt import tensorrt_backend

    ((x, t, y),) = feeds([500.0], batch=17)
    with pytest.raises(DitqError, match=r"outside the engines' profile \[1, 16\]"):
        tensorrt_backend(real_engines.root)(x, t, y)


def test_sample_and_validate_through_the_cli(real_engines, tiny_onnx, tmp_path):
    png = tmp_path / "grid.png"
    assert main(["-q", "sample", str(real_engines.root), "--backend", "tensorrt", "--steps", "5", "--classes", "0,1",
                 "-o", str(png)]) == 0
    assert png.stat().st_size > 0
    out = tmp_path / "validation"
    assert main(["-q", "validate", str(tiny_onnx.root), "-o", str(out), "--steps", "20",
                 "--trt", str(real_engines.root)]) == 0
    report = json.loads((out / "validation.json").read_text())
    assert report["passed"] and all(g["metrics"]["tensorrt-vs-onnxrt-qdq"]["sqnr_db"] > 25.0
                                    for g in report["groups"])


def test_fp16_set_builds_and_runs(trt_ready, tiny_model, tiny_recipe, tiny_recipe_dir, tmp_path, feeds):
    from ditq.export.onnx_export import export_onnx
    from ditq.runtime.backends.tensorrt import tensorrt_backend

    onnx16 = export_onnx(tiny_model, tiny_recipe, tmp_path / "onnx16", recipe_dir=tiny_recipe_dir, precision="fp16",
                         progress=False)
    engines = build_engines(onnx16, tmp_path / "engines16", BuildConfig(max_batch=8, opt_level=1), progress=False)
    assert engines.precision == "fp16"
    trt_backend, ort_backend = tensorrt_backend(engines.root), onnxruntime_backend(onnx16, fuse=False)
    for x, t, y in feeds([20.0, 600.0], batch=4):
        assert _sqnr_db(trt_backend(x, t, y), ort_backend(x, t, y)) > 20.0
