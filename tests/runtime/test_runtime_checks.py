"""Runtime input checks: the scheduler's training schedule, the timestep range, the class labels."""

from __future__ import annotations

import pytest
import torch

from ditq.errors import DitqError


def _vae():
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(in_channels=1, out_channels=1, latent_channels=1, block_out_channels=(8,),
                         down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",),
                         norm_num_groups=4, layers_per_block=1).eval()


@pytest.mark.parametrize("backend", ["onnxruntime", "fake-quant", "torch-int8"])
def test_pipeline_with_a_500_step_scheduler_is_refused(tiny_onnx, tiny_model, backend):
    from diffusers import DDIMScheduler, DiTPipeline

    from ditq.runtime.pipeline import QuantizedTransformer

    qt = QuantizedTransformer.from_pretrained(tiny_onnx.root, backend=backend)
    s500 = DDIMScheduler.from_config(tiny_model.scheduler_config, num_train_timesteps=500)
    pipe = DiTPipeline(transformer=qt, vae=_vae(), scheduler=s500)
    kwargs = dict(class_labels=[3], guidance_scale=1.0, num_inference_steps=3, output_type="pt")
    with pytest.raises(DitqError, match="T=1000 .* uses T=500"):
        pipe(generator=torch.Generator().manual_seed(0), **kwargs)
    assert sum(qt.backend.calls) == 0  # refused before running any group
    with pytest.raises(DitqError, match="T=500"):
        qt.check_scheduler(s500)
    # the same pipeline with the calibrated schedule runs; swapping the scheduler later is caught too
    pipe.scheduler = DDIMScheduler.from_config(tiny_model.scheduler_config)
    assert pipe(generator=torch.Generator().manual_seed(0), **kwargs).images.shape == (1, 1, 8, 8)
    pipe.scheduler = s500
    with pytest.raises(DitqError, match="T=500"):
        pipe(generator=torch.Generator().manual_seed(0), **kwargs)


@pytest.mark.parametrize("backend", ["onnxruntime", "fake-quant", "torch-int8"])
@pytest.mark.parametrize("timestep", [float("inf"), float("-inf"), float("nan"), 1000.0, -1.0])
def test_timestep_outside_the_training_axis_is_a_ditq_error(tiny_onnx, backend, timestep):
    from ditq.runtime.pipeline import QuantizedTransformer

    qt = QuantizedTransformer.from_pretrained(tiny_onnx.root, backend=backend)
    with pytest.raises(DitqError, match=r"timestep .* range \[0, 999\]") as err:
        qt(torch.randn(1, 1, 8, 8), timestep=torch.tensor([timestep]), class_labels=torch.tensor([1]))
    assert "\n" not in str(err.value)


def test_recipe_group_of_refuses_inf(tiny_recipe):
    with pytest.raises(DitqError, match=r"timestep inf .*\[0, 999\]"):
        tiny_recipe.group_of(float("inf"))


@pytest.mark.parametrize("backend", ["onnxruntime", "fake-quant", "torch-int8"])
def test_out_of_range_class_label_is_a_ditq_error(tiny_onnx, backend):
    from ditq.runtime.backends import open_backend
    from ditq.runtime.pipeline import QuantizedTransformer

    qt = QuantizedTransformer.from_pretrained(tiny_onnx.root, backend=backend)
    x = torch.randn(2, 1, 8, 8)
    with pytest.raises(DitqError, match=r"class label 11 .* 10-class model: labels lie in \[0, 9\]"):
        qt(x, timestep=torch.tensor(10), class_labels=torch.tensor([3, 11]))
    with pytest.raises(DitqError, match="class label -1"):
        qt(x, timestep=torch.tensor(10), class_labels=torch.tensor([-1, 0]))
    out = qt(x, timestep=torch.tensor(10), class_labels=torch.tensor([9, 10]), return_dict=False)[0]
    assert out.shape == x.shape  # 10 is the null label CFG uses
    backend_fn, _ = open_backend(tiny_onnx.root, backend)
    with pytest.raises(DitqError, match="class label 11"):
        backend_fn(x, torch.full((2,), 10.0), {"class_labels": torch.tensor([11, 0])})
