"""SmoothQuant's alpha search: one alpha for the model, the best model-output SQNR with every site quantized."""

from __future__ import annotations

import pytest
import torch

from ditq.errors import DitqError


@pytest.fixture(scope="module")
def outlier_model(tmp_path_factory):
    """The tiny DiT with a few input columns of every quantized Linear's weight 10x larger: at W4 a high alpha keeps
    those outliers in the weights (per-output-channel INT4 then crushes the rest of each row), a low alpha moves them
    into the INT8 activations, which take them far better."""
    from diffusers import DDPMScheduler

    from ditq.models.loading import load_model, quant_sites
    from ditq.models.tiny import tiny_dit

    model = tiny_dit(0)
    modules = dict(model.named_modules())
    with torch.no_grad():
        for site in quant_sites(model):
            for lin in site.linears:
                modules[lin].weight[:, :3] *= 10.0
    out = tmp_path_factory.mktemp("outliers") / "model"
    model.save_pretrained(out / "transformer", safe_serialization=True)
    DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2").save_pretrained(out / "scheduler")
    return load_model(out)


def _calibrate(model, **params):
    from ditq.calibration.calibrate import CalibConfig, calibrate
    from ditq.calibration.methods import method_config

    return calibrate(model, method_config("smoothquant", **params),
                     CalibConfig(steps=8, samples=2, seed=1, w_bits=4, progress=False))


def _held_out_sqnr(model, recipe) -> float:
    """Mean per-step output SQNR on a sampler run from other noise (seed 5) than the calibration's."""
    from ditq.bench.quality import evaluate
    from ditq.runtime.backends import torch_backend
    from ditq.testbed.scoring import SamplingSpec, fp_reference

    spec = SamplingSpec(steps=6, cfg_scale=3.0, seed=5)
    ref = fp_reference(model, torch.arange(4) % model.num_conditions, spec)
    return evaluate(model, torch_backend(model, recipe), ref, spec, None, sample_images=False)["sqnr_mean_db"]


def test_alpha_search_picks_the_alpha_that_is_best_end_to_end(outlier_model):
    searched = _calibrate(outlier_model, alpha="search", alphas=(0.2, 0.8))
    trace = searched.calibration["method"]["alpha_search"]
    picked = trace["alpha"]
    assert set(trace["output_sqnr_db"]) == {"0.2", "0.8"}
    assert {s.alpha for s in searched.sites} == {picked}  # one alpha for the model
    held_out = {a: _held_out_sqnr(outlier_model, _calibrate(outlier_model, alpha=a)) for a in (0.2, 0.8)}
    best = max(held_out, key=held_out.__getitem__)
    assert held_out[0.2] > held_out[0.8] + 3.0, held_out  # the case separates the two alphas: the default loses
    assert picked == best == 0.2, (trace, held_out)
    fixed = _calibrate(outlier_model, alpha=picked)
    for site in searched.sites:  # the searched recipe is the fixed-alpha recipe of its pick
        assert torch.equal(searched.smooth(site.name), fixed.smooth(site.name))


def test_only_the_search_runs_the_model_and_bad_options_are_one_line_errors():
    from ditq.calibration.methods import method_config

    assert method_config("smoothquant").needs_model and method_config("smoothquant").alpha == "search"
    assert not method_config("smoothquant", alpha=0.8).needs_model
    with pytest.raises(DitqError, match="'search'"):
        method_config("smoothquant", alpha="best")
    with pytest.raises(DitqError, match="alphas"):
        method_config("smoothquant", alpha="search", alphas=(0.5, 1.2))


def test_search_without_probes_falls_back_to_the_default_alpha(tiny_model, caplog):
    from ditq.calibration.calibrate import CalibConfig, calibrate
    from ditq.calibration.methods import method_config

    def loop(transformer):  # positional timestep: the probe recorder sees no timestep= keyword
        x = torch.randn(2, 1, 8, 8)
        transformer(x, torch.tensor([500, 500]), class_labels=torch.tensor([0, 1]))

    recipe = calibrate(tiny_model, method_config("smoothquant"),
                       CalibConfig(steps=2, samples=1, progress=False), forward_loop=loop)
    assert {s.alpha for s in recipe.sites} == {0.8} and "using alpha 0.8" in caplog.text
