"""QuantizedTransformer as ``pipe.transformer`` of diffusers' DiT and PixArt pipelines: ``pipe(...)`` unchanged."""

from __future__ import annotations

import pytest
import torch

from ditq.errors import DitqError

pytest.importorskip("transformers", reason="diffusers' PixArt pipelines import transformers (in the dev extra)")


def _sqnr_db(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float(10 * torch.log10(ref.double().square().sum() / (out.double() - ref.double()).square().sum()))


def _pixart_kwargs(model, rows, steps=10):
    c, n = model.cond(rows), model.null_cond(len(rows))
    return dict(prompt_embeds=c["encoder_hidden_states"], prompt_attention_mask=c["encoder_attention_mask"],
                negative_prompt=None, negative_prompt_embeds=n["encoder_hidden_states"],
                negative_prompt_attention_mask=n["encoder_attention_mask"], num_inference_steps=steps,
                guidance_scale=4.5, output_type="latent", use_resolution_binning=False)


@pytest.mark.parametrize("pipeline", ["PixArtAlphaPipeline", "PixArtSigmaPipeline"])
def test_pixart_pipelines_run_unchanged_with_the_quantized_transformer(pipeline, pixart_model, pixart_dir,
                                                                        pixart_onnx, tmp_path):
    import diffusers

    from ditq.runtime.pipeline import QuantizedTransformer

    cls = getattr(diffusers, pipeline)
    scheduler = diffusers.DPMSolverMultistepScheduler.from_pretrained(pixart_dir / "scheduler")
    pipe = cls(tokenizer=None, text_encoder=None, vae=None, transformer=pixart_model.transformer,
               scheduler=scheduler)
    kwargs = _pixart_kwargs(pixart_model, [0, 4])
    fp = pipe(generator=torch.Generator().manual_seed(0), **kwargs).images

    # a pipeline directory loads as in diffusers, with the quantized transformer passed in
    pipe.save_pretrained(tmp_path / "pipe")
    quantized = QuantizedTransformer.from_pretrained(pixart_onnx.root, exact_qdq=True)
    # (this test pipeline has no text encoder, tokenizer or VAE: real checkpoints load theirs from the directory)
    pipe = cls.from_pretrained(tmp_path / "pipe", transformer=quantized, tokenizer=None, text_encoder=None, vae=None)
    assert pipe.transformer is quantized
    q = pipe(generator=torch.Generator().manual_seed(0), **kwargs).images
    assert q.shape == fp.shape == (2, 4, 8, 8)
    assert all(c > 0 for c in quantized.backend.calls), quantized.backend.calls  # every group served a step
    assert _sqnr_db(q, fp) > 30

    # the torch (fake-quant) backend reads the recipe the set was exported from: same numerics
    pipe.transformer = QuantizedTransformer.from_pretrained(pixart_onnx.root, backend="fake-quant")
    q_torch = pipe(generator=torch.Generator().manual_seed(0), **kwargs).images
    assert _sqnr_db(q_torch, q) > 60


def test_pixart_native_resolution_is_enforced(pixart_onnx):
    from ditq.runtime.pipeline import QuantizedTransformer

    qt = QuantizedTransformer.from_pretrained(pixart_onnx.root)
    x, emb = torch.randn(1, 4, 8, 8), torch.randn(1, 12, 24)
    with pytest.raises(DitqError, match="serve 64x64"):
        qt(x, timestep=torch.tensor([10]), encoder_hidden_states=emb,
           added_cond_kwargs={"resolution": torch.tensor([[512.0, 512.0]]), "aspect_ratio": torch.ones(1, 1)})
    out = qt(x, timestep=torch.tensor(10), encoder_hidden_states=emb, return_dict=False)[0]
    assert out.shape == (1, 8, 8, 8) and not out[:, 4:].any()  # learned sigma: the variance half is zero
    with pytest.raises(DitqError, match="share one timestep"):
        qt(torch.randn(2, 4, 8, 8), timestep=torch.tensor([10, 900]), encoder_hidden_states=emb.expand(2, -1, -1))


@pytest.fixture(scope="module")
def dit_1000(tmp_path_factory):
    """A tiny DiT with 1000 classes: DiTPipeline's CFG hard-codes the null class 1000 (ImageNet)."""
    from ditq.calibration.calibrate import CalibConfig, calibrate
    from ditq.calibration.methods import method_config
    from ditq.export.onnx_export import export_onnx
    from ditq.models.loading import load_model
    from ditq.models.tiny import save_tiny_model_dir

    root = tmp_path_factory.mktemp("dit1000")
    model = load_model(save_tiny_model_dir(root / "model", num_embeds_ada_norm=1000))
    recipe = calibrate(model, method_config("htg", groups=2), CalibConfig(steps=20, samples=4, progress=False))
    recipe.save(root / "recipe")
    return model, export_onnx(model, recipe, root / "onnx", recipe_dir=root / "recipe", progress=False)


def test_dit_pipeline_runs_unchanged_with_the_quantized_transformer(dit_1000):
    from diffusers import AutoencoderKL, DDIMScheduler, DiTPipeline

    from ditq.runtime.pipeline import QuantizedTransformer

    model, onnx_set = dit_1000
    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=1, out_channels=1, latent_channels=1, block_out_channels=(8,),
                        down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",),
                        norm_num_groups=4, layers_per_block=1).eval()
    pipe = DiTPipeline(transformer=model.transformer, vae=vae,
                       scheduler=DDIMScheduler.from_config(model.scheduler_config))
    kwargs = dict(class_labels=[3, 7], guidance_scale=3.0, num_inference_steps=12, output_type="pt")
    fp = pipe(generator=torch.Generator().manual_seed(0), **kwargs).images
    pipe.transformer = QuantizedTransformer.from_pretrained(onnx_set.root, exact_qdq=True)
    q = pipe(generator=torch.Generator().manual_seed(0), **kwargs).images
    assert q.shape == fp.shape == (2, 1, 8, 8)
    assert all(c > 0 for c in pipe.transformer.backend.calls)
    assert _sqnr_db(q, fp) > 25
