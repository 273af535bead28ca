"""The public API end to end: ``ditq.calibrate(pipe, preset)`` -> save -> export_onnx -> QuantizedTransformer as
``pipe.transformer`` on the tiny DiT and a tiny PixArt (with a real, tiny T5 text encoder and tokenizer)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

import ditq
from ditq.errors import DitqError

pytest.importorskip("transformers", reason="diffusers' PixArt pipelines import transformers (in the dev extra)")

STEPS = 8


def _sqnr_db(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float(10 * torch.log10(ref.double().square().sum() / (out.double() - ref.double()).square().sum()))


def _fast(config, steps=STEPS, samples=4):
    method = dataclasses.replace(config.method, groups=2) if config.method.name == "htg" else config.method
    return dataclasses.replace(config, method=method, calibration=ditq.CalibrationSpec(steps=steps, samples=samples))


@pytest.fixture(scope="module")
def dit_pipe():
    """A tiny DiTPipeline (1000 classes: its CFG hard-codes the null class 1000) with a one-level VAE."""
    from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, DiTPipeline

    from ditq.models.tiny import tiny_dit

    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=1, out_channels=1, latent_channels=1, block_out_channels=(8,),
                        down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",),
                        norm_num_groups=4, layers_per_block=1).eval()
    train = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    return DiTPipeline(transformer=tiny_dit(num_embeds_ada_norm=1000), vae=vae,
                       scheduler=DDIMScheduler.from_config(train.config))


def _tiny_t5_pipeline(cls_name: str):
    """A PixArt pipeline whose text encoder is a tiny random T5 and whose tokenizer is a word-level one built in
    memory: prompts really go through ``encode_prompt``, offline."""
    import diffusers
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, T5Config, T5EncoderModel

    from ditq.models.tiny import tiny_pixart

    words = "a red fox in the snow lighthouse at dusk cat on mat blue sky over sea".split()
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                                        unk_token="<unk>")
    torch.manual_seed(1)
    encoder = T5EncoderModel(T5Config(vocab_size=len(vocab), d_model=24, d_kv=8, num_heads=2, num_layers=1,
                                      d_ff=32)).eval()
    scheduler = diffusers.DPMSolverMultistepScheduler(num_train_timesteps=1000)
    return getattr(diffusers, cls_name)(tokenizer=tokenizer, text_encoder=encoder, vae=None,
                                        transformer=tiny_pixart(), scheduler=scheduler)


PROMPTS = ["a red fox in the snow", "a lighthouse at dusk", "a cat on a mat", "blue sky over the sea"]
PIXART_CALL = dict(num_inference_steps=6, guidance_scale=4.5, output_type="latent", use_resolution_binning=False,
                   max_sequence_length=12, clean_caption=False)


def test_dit_pipeline_calibrate_save_export_and_drop_in(dit_pipe, tmp_path):
    from ditq.runtime.pipeline import QuantizedTransformer

    kwargs = dict(class_labels=[3, 7], guidance_scale=3.0, num_inference_steps=10, output_type="pt")
    fp = dit_pipe(generator=torch.Generator().manual_seed(0), **kwargs).images

    recipe = ditq.calibrate(dit_pipe, _fast(ditq.W8A8_HTG), prompts=[1, 3, 5, 7])
    assert recipe.num_groups == 2 and recipe.calibration["model_loader"] == "pipeline"
    assert ditq.QuantConfig.from_dict(recipe.calibration["config"]) == _fast(ditq.W8A8_HTG)
    recipe.save(tmp_path / "recipe")
    with pytest.raises(DitqError, match="already exists"):  # the output rule: no silent overwrite
        recipe.save(tmp_path / "recipe")
    assert ditq.load_recipe(tmp_path / "recipe").model_sha256 == recipe.model_sha256

    # the recipe of an in-memory pipeline needs the model again; the saved recipe links the set to its parent
    with pytest.raises(DitqError, match="model="):
        ditq.export_onnx(tmp_path / "recipe", tmp_path / "onnx")
    onnx_set = ditq.export_onnx(recipe, tmp_path / "onnx", model=dit_pipe)
    assert onnx_set.check_parent() == (tmp_path / "recipe").resolve()

    original = dit_pipe.transformer
    try:
        dit_pipe.transformer = QuantizedTransformer.from_pretrained(onnx_set.root, backend="onnxruntime",
                                                                    exact_qdq=True)
        q = dit_pipe(generator=torch.Generator().manual_seed(0), **kwargs).images
    finally:
        dit_pipe.transformer = original
    assert q.shape == fp.shape and _sqnr_db(q, fp) > 20

    # the library sampler and validation over the same set (the model passed again: it lives in memory)
    images = ditq.sample(onnx_set.root, [3, 7], steps=4, exact_qdq=True)
    assert images.shape == (2, 1, 8, 8) and torch.isfinite(images).all()
    report = ditq.validate(onnx_set.root, tmp_path / "report", model=dit_pipe, steps=STEPS)
    assert report["passed"], ditq.validate_failures(report)
    assert json.loads((tmp_path / "report" / "validation.json").read_text())["passed"]


def test_forward_loop_receives_the_model_and_timesteps_come_from_its_calls(dit_pipe):
    seen = []

    def loop(model):
        seen.append(model)
        dit_pipe(class_labels=[1, 2], num_inference_steps=5, output_type="pt",
                 generator=torch.Generator().manual_seed(0))

    recipe = ditq.calibrate(dit_pipe.transformer, _fast(ditq.W8A8_HTG), forward_loop=loop,
                            scheduler=dit_pipe.scheduler)
    assert seen == [dit_pipe.transformer]
    dit_pipe.scheduler.set_timesteps(5)
    expected = sorted((int(t) for t in dit_pipe.scheduler.timesteps), reverse=True)
    assert sorted((t for g in recipe.groups for t in g.timesteps), reverse=True) == expected
    assert recipe.calibration["model_loader"] == "transformer" and recipe.calibration["forward_loop"] == "user"

    with pytest.raises(DitqError, match="will not guess"):  # a bare transformer: no default scheduler
        ditq.calibrate(dit_pipe.transformer, _fast(ditq.W8A8_HTG), forward_loop=loop)
    with pytest.raises(DitqError, match="without a timestep"):
        ditq.calibrate(dit_pipe.transformer, _fast(ditq.W8A8_MINMAX), scheduler=dit_pipe.scheduler,
                       forward_loop=lambda tr: tr(torch.randn(2, 1, 8, 8), class_labels=torch.tensor([1, 2])))


@pytest.mark.parametrize("cls_name", ["PixArtSigmaPipeline"])
def test_pixart_pipeline_captions_come_from_the_prompts(cls_name, tmp_path):
    from ditq.runtime.pipeline import QuantizedTransformer

    pipe = _tiny_t5_pipeline(cls_name)
    fp = pipe(PROMPTS[:2], generator=torch.Generator().manual_seed(0), **PIXART_CALL).images

    recipe = ditq.calibrate(pipe, _fast(ditq.W8A8_HTG, samples=4), prompts=PROMPTS)
    emb, *_ = pipe.encode_prompt(PROMPTS, negative_prompt="")
    assert recipe.captions.num == len(PROMPTS) and torch.allclose(recipe.captions.embeds, emb, atol=1e-5)
    recipe.save(tmp_path / "recipe")
    assert (tmp_path / "recipe" / "captions.safetensors").is_file()

    # Model Optimizer style: the bare transformer, the pipeline run by the user's loop, the caption table given
    own = ditq.calibrate(pipe.transformer, _fast(ditq.W8A8_MINMAX), scheduler=pipe.scheduler,
                         captions=recipe.captions, forward_loop=lambda tr: pipe(PROMPTS[:1], **PIXART_CALL))
    pipe.scheduler.set_timesteps(PIXART_CALL["num_inference_steps"])
    assert sorted(t for g in own.groups for t in g.timesteps) == sorted(int(t) for t in pipe.scheduler.timesteps)
    onnx_set = ditq.export_onnx(tmp_path / "recipe", tmp_path / "onnx", model=pipe)
    pipe.transformer = QuantizedTransformer.from_pretrained(onnx_set.root, backend="onnxruntime", exact_qdq=True)
    q = pipe(PROMPTS[:2], generator=torch.Generator().manual_seed(0), **PIXART_CALL).images
    assert q.shape == fp.shape and _sqnr_db(q, fp) > 20

    # the model check: other weights are refused
    other = _tiny_t5_pipeline(cls_name)
    with torch.no_grad():
        next(other.transformer.parameters()).add_(0.01)
    with pytest.raises(DitqError, match="not the one the recipe"):
        ditq.export_onnx(tmp_path / "recipe", tmp_path / "onnx2", model=other)


def test_smoothquant_preset_and_htg_default_are_at_full_strength():
    """The baseline smooths every site with one alpha searched end to end; HTG scores its alphas end to end."""
    sq = ditq.W8A8_SMOOTHQUANT.method
    assert (sq.alpha, sq.explicit) == ("search", True) and sq == ditq.SmoothQuantConfig() and sq.needs_model
    assert ditq.W8A8_HTG.method.alpha_criterion == ditq.HTGConfig().alpha_criterion != "local"


def test_presets_round_trip_and_refuse_other_versions_and_bad_values():
    for name, config in ditq.PRESETS.items():
        body = json.loads(json.dumps(config.to_dict()))
        assert ditq.QuantConfig.from_dict(body) == config, name
        assert getattr(ditq, name) is config and ditq.preset(name.lower()) is config
    custom = dataclasses.replace(ditq.W8A8_HTG, method=ditq.HTGConfig(groups=4), w_bits=4, w_block=32)
    assert ditq.QuantConfig.from_dict(custom.to_dict()) == custom
    assert ditq.W8A8_PTQ4DIT.calibration.steps == 25  # the method's own calibration run
    with pytest.raises(DitqError, match="version 2"):
        ditq.QuantConfig.from_dict({**ditq.W8A8_HTG.to_dict(), "version": 2})
    with pytest.raises(DitqError, match="w_block"):
        dataclasses.replace(ditq.W8A8_HTG, w_block=48)
    with pytest.raises(DitqError, match="weight_clip"):
        dataclasses.replace(ditq.W8A8_HTG, weight_clip="max")
    with pytest.raises(DitqError, match="steps"):
        ditq.CalibrationSpec(steps=0)
    with pytest.raises(DitqError, match="unknown preset"):
        ditq.preset("W2A2_MAGIC")
    with pytest.raises(dataclasses.FrozenInstanceError):
        ditq.W8A8_HTG.w_bits = 4  # type: ignore[misc]


def test_a_hub_id_loads_offline_from_a_hub_layout_cache(dit_pipe, tmp_path, monkeypatch):
    import huggingface_hub.constants

    cache = tmp_path / "hub"
    snapshot = cache / "models--tiny-org--tiny-dit" / "snapshots" / ("0" * 40)
    dit_pipe.save_pretrained(snapshot)
    (cache / "models--tiny-org--tiny-dit" / "refs").mkdir()
    (cache / "models--tiny-org--tiny-dit" / "refs" / "main").write_text("0" * 40)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)

    recipe = ditq.calibrate("tiny-org/tiny-dit", _fast(ditq.W8A8_MINMAX), cache_dir=cache)
    assert recipe.model_source == "tiny-org/tiny-dit" and recipe.calibration["model_loader"] == "pipeline"
    recipe.save(tmp_path / "recipe")
    # export finds the model again from the id the recipe records, in the same cache
    onnx_set = ditq.export_onnx(tmp_path / "recipe", tmp_path / "onnx", cache_dir=cache)
    assert onnx_set.model["source"] == "tiny-org/tiny-dit"
    with pytest.raises(DitqError, match="could not load 'tiny-org/missing'"):
        ditq.calibrate("tiny-org/missing", _fast(ditq.W8A8_MINMAX), cache_dir=cache)
