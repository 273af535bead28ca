"""``ditq bench quality``: the quick grid end to end through the CLI, and the pieces it is built from."""

import csv
import json

import numpy as np
import pytest
import torch

from ditq.bench.quality_grid import QualityConfig, modelopt_config
from ditq.errors import DitqError


def test_quick_quality_grid_through_the_cli(tmp_path, capsys):
    from ditq._deps import has_module
    from ditq.cli.main import main

    out = tmp_path / "quality"
    assert main(["-q", "bench", "quality", "--quick", "-o", str(out)]) == 0
    assert "| htg | W4A8 |" in capsys.readouterr().out
    body = json.loads((out / "quality.json").read_text())
    cells = {(c["method"], c["bits"]): c for c in body["cells"]}
    assert set(cells) == {(m, b) for m in ("minmax", "htg") for b in ("W8A8", "W4A8")}
    for c in cells.values():
        assert c["sqnr_mean_db"] > 20 and c["psnr_db"] > 15 and c["artifact_bytes"] > 0
        assert c["ort_vs_torch_sqnr_db"] > 60  # exact-QDQ graphs and the torch fake-quant agree
        # ... far above the quantization error at the same inputs (the margin is that SQNR minus torch's vs FP)
        if np.isfinite(c["ort_vs_torch_sqnr_db"]):  # (bit-identical outputs would make both infinite)
            assert 20 < c["ort_vs_torch_margin_db"] < c["ort_vs_torch_sqnr_db"] - 10
        assert len(c["sqnr_per_step_db"]) == c["steps"] == 5
    # INT4 weights shrink the artifact (min-max: HTG's recipes rotate different sites at W4A8 and W8A8, and on this
    # tiny model a rotation's Hadamard constant weighs as much as a Linear's weights)
    assert cells["minmax", "W4A8"]["artifact_bytes"] < cells["minmax", "W8A8"]["artifact_bytes"]
    ag = body["agreement"]
    assert abs(ag["onnxruntime"]["sqnr_mean_db"] - ag["torch"]["sqnr_mean_db"]) < 0.5
    rows = list(csv.DictReader(open(out / "quality.csv")))
    assert rows[0]["method"] == "fp" and len(rows) == 1 + len(cells)
    assert (out / "samples_w4a8.png").stat().st_size > 0
    assert (out / "sqnr_over_timesteps.png").exists() == has_module("matplotlib")
    assert "| FP32 (floor) | FP32 | 5 |" in (out / "quality.md").read_text()
    assert "ORT vs torch (dB) (margin)" in (out / "quality.md").read_text()


def test_config_errors_are_one_line():
    with pytest.raises(DitqError, match="unknown method"):
        QualityConfig(methods=("awq",))
    with pytest.raises(DitqError, match="W8A8"):
        QualityConfig(bits=("W2A2",))


def test_cfg_rows_keep_conditional_and_unconditional_twins():
    from ditq.bench.quality import _cfg_rows

    assert torch.equal(_cfg_rows(20, 3), torch.tensor([0, 1, 2, 10, 11, 12]))
    assert _cfg_rows(20, 10) == slice(None) and _cfg_rows(20, None) == slice(None)


def test_modelopt_config_touches_only_the_quantized_linears():
    linears = ["transformer_blocks.0.attn1.to_q", "transformer_blocks.0.ff.net.2"]
    cfg = modelopt_config(linears, "w4a8-max", w4_block=64)
    assert cfg["algorithm"] == "max" and cfg["quant_cfg"][0] == {"quantizer_name": "*", "enable": False}
    weights = [e for e in cfg["quant_cfg"] if e["quantizer_name"].endswith("weight_quantizer")]
    assert [e["quantizer_name"] for e in weights] == [f"*{lin}.weight_quantizer" for lin in linears]
    assert weights[0]["cfg"] == {"num_bits": 4, "block_sizes": {-1: 64, "type": "static"}}
    inputs = [e for e in cfg["quant_cfg"] if e["quantizer_name"].endswith("input_quantizer")]
    assert all(e["cfg"] == {"num_bits": 8, "axis": None} for e in inputs)
    assert modelopt_config(linears, "int8-smoothquant")["algorithm"]["method"] == "smoothquant"


def test_peer_rows_are_skipped_with_a_note_without_modelopt(monkeypatch):
    import ditq._deps
    from ditq.bench.quality_grid.peers import peer_rows

    monkeypatch.setattr(ditq._deps, "has_module", lambda name: False)
    rows, note = peer_rows(None, QualityConfig(), {}, {}, None, lambda _m: None)
    assert rows == [] and "nvidia-modelopt is not installed" in note


def test_method_variants_parse():
    from ditq.bench.quality_grid import parse_method

    assert parse_method("htg") == ("htg", {})
    assert parse_method("qdit:min_mean_group=64:population=8") == ("qdit", {"min_mean_group": 64, "population": 8})
    assert parse_method("htg:alphas=[0.5]") == ("htg", {"alphas": (0.5,)})
    with pytest.raises(DitqError, match="key=value"):
        parse_method("htg:groups")
    QualityConfig(methods=("qdit:min_mean_group=64",))


def test_evaluation_spec_follows_the_config():
    from ditq.testbed.scoring import SamplingSpec

    assert QualityConfig(cfg_scale=2.0, seed=7).spec(25) == SamplingSpec(steps=25, cfg_scale=2.0, seed=7)


def test_fp8_cells_run_static_methods_and_skip_dynamic_ones(tmp_path):
    from ditq.bench.quality_grid import quick_config, run_quality_grid

    assert quick_config().bits == ("W8A8", "W4A8")  # the CI grid keeps its runtime
    assert "W8A8-FP8" in QualityConfig().bits
    config = quick_config(methods=("htg", "qdit"), bits=("W8A8-FP8",), steps=(3,), eval_samples=4, plots=False)
    body = run_quality_grid(tmp_path / "q", config)
    cells = {(c["method"], c["bits"]): c for c in body["cells"]}
    assert set(cells) == {("htg", "W8A8-FP8")}
    assert body["skipped"] == ["qdit-W8A8-FP8"]
    assert body["recipes"]["htg-W8A8-FP8"]["formats"] == ["fp8_e4m3"]
    fp8 = cells["htg", "W8A8-FP8"]
    assert fp8["sqnr_mean_db"] > 20 and fp8["ort_vs_torch_sqnr_db"] > 40  # ONNX Runtime runs the FP8 Q/DQ exactly
    md = (tmp_path / "q" / "quality.md").read_text()
    assert "| htg | W8A8-FP8 | 3 |" in md and "not run: qdit-W8A8-FP8" in md


def test_modelopt_fp8_peer_is_its_e4m3_per_tensor_default_in_the_fp8_column():
    from ditq.bench.quality_grid.peers import PEER_CONFIGS, peer_bits

    cfg = modelopt_config(["transformer_blocks.0.attn1.to_q"], "fp8-max")
    assert cfg["algorithm"] == "max"
    assert [e["cfg"] for e in cfg["quant_cfg"][1:]] == [{"num_bits": (4, 3), "axis": None}] * 2
    assert modelopt_config(["a"], "int8-smoothquant-a08")["algorithm"] == {"method": "smoothquant", "alpha": 0.8}
    assert {k: peer_bits(k) for k in PEER_CONFIGS} == {"int8-max": "W8A8", "int8-smoothquant": "W8A8",
                                                      "int8-smoothquant-a08": "W8A8",
                                                      "fp8-max": "W8A8-FP8", "w4a8-max": "W4A8",
                                                      "w4a8-awq-lite": "W4A8"}


def test_w4a16_cells_are_the_tensorrt_int4_form_next_to_w4a8(tmp_path):
    from ditq.bench.quality_grid import quick_config, run_quality_grid

    assert "W4A16" in QualityConfig().bits
    config = quick_config(methods=("htg",), bits=("W4A8", "W4A16"), steps=(3,), eval_samples=4, plots=False)
    body = run_quality_grid(tmp_path / "q", config)
    cells = {(c["method"], c["bits"]): c for c in body["cells"]}
    w4a8, w4a16 = cells["htg", "W4A8"], cells["htg", "W4A16"]
    # the weight-only graphs match their own torch reference (float activations on the INT4 Linears) ...
    assert w4a16["ort_vs_torch_sqnr_db"] > 40
    # ... and are not the W4A8 numbers again (the activation quantizer is gone)
    assert w4a16["sqnr_mean_db"] != w4a8["sqnr_mean_db"]
    onnx_manifest = (tmp_path / "q" / "onnx" / "htg-W4A16" / "manifest.json").read_text()
    assert '"target": "tensorrt"' in onnx_manifest
    assert "W4A16: the W4A8 recipe exported as TensorRT builds INT4" in (tmp_path / "q" / "quality.md").read_text()


def test_several_calibration_seeds_give_mean_and_spread_rows_and_a_paired_comparison(tmp_path, capsys):
    from ditq.cli.main import main

    out = tmp_path / "q"
    assert main(["-q", "bench", "quality", "--quick", "--methods", "smoothquant,htg", "--bits", "W8A8",
                 "--steps", "3", "--eval-samples", "4", "--no-plots", "--calib-seeds", "2", "3", "-o", str(out)]) == 0
    body = json.loads((out / "quality.json").read_text())
    assert body["calib_seeds"] == [2, 3]
    cells = {(c["method"], c["calib_seed"]): c for c in body["cells"]}
    assert set(cells) == {(m, s) for m in ("smoothquant", "htg") for s in (2, 3)}
    assert set(body["recipes"]) == {f"{m}-W8A8-seed{s}" for m in ("smoothquant", "htg") for s in (2, 3)}
    for c in cells.values():  # both PSNR forms: pooled MSE <= mean of per-image PSNR (Jensen)
        assert len(c["psnr_per_image_db"]) == 4 and c["psnr_global_db"] <= c["psnr_db"] + 1e-9
    htg2, htg3 = cells["htg", 2], cells["htg", 3]
    assert htg2["sqnr_mean_db"] != htg3["sqnr_mean_db"]  # the seed reaches the calibration data
    summary = {r["method"]: r for r in body["summary"]}
    h = summary["htg"]
    assert h["calib_seeds"] == [2, 3]
    for k in ("psnr_global_db", "psnr_db", "sqnr_mean_db"):
        lo, hi = sorted([htg2[k], htg3[k]])
        assert h[k] == pytest.approx((lo + hi) / 2) and (h[f"{k}_min"], h[f"{k}_max"]) == (lo, hi)
    md = (out / "quality.md").read_text()
    assert f"| htg | W8A8 | 3 | 2 | {h['sqnr_mean_db']:.2f} ({h['sqnr_mean_db_min']:.2f}–" in md
    rows = list(csv.DictReader(open(out / "quality.csv")))
    assert [r["method"] for r in rows] == ["fp", "smoothquant", "htg"] and rows[2]["calib_seeds"] == "2 3"
    (paired,) = body["paired"]
    assert paired["method"] == "htg" and paired["peer"] == "smoothquant" and paired["images"] == 4
    diff = np.mean(np.mean([htg2["psnr_per_image_db"], htg3["psnr_per_image_db"]], 0)
                   - np.mean([cells["smoothquant", s]["psnr_per_image_db"] for s in (2, 3)], 0))
    assert paired["psnr_db_diff"] == pytest.approx(diff)
    lo, hi = paired["psnr_db_diff_ci95"]
    assert lo <= paired["psnr_db_diff"] <= hi
    assert "HTG minus the best one-scale static peer" in md and "| htg | W8A8 | 3 | smoothquant |" in md


def test_paired_bootstrap_picks_the_best_one_scale_peer_and_brackets_a_known_gap():
    from ditq.bench.quality_grid.seeds import global_psnr, paired_comparisons

    rng = np.random.default_rng(1)
    base = rng.uniform(30, 40, 200)

    def row(method, shift, seed):
        return {"method": method, "bits": "W8A8", "steps": 5, "calib_seed": seed,
                "psnr_per_image_db": list(base + shift + rng.normal(0, 0.5, 200))}

    rows = [row("htg", 2.0, 1), row("htg", 2.0, 2), row("smoothquant", 0.0, 1), row("smoothquant", 0.0, 2),
            row("modelopt int8-smoothquant-a08", 1.0, 1), row("modelopt int8-smoothquant-a08", 1.0, 2),
            row("ptq4dit", 5.0, 1)]  # not a one-scale peer: ignored although it is the best
    (p,) = paired_comparisons(rows)
    assert p["peer"] == "modelopt int8-smoothquant-a08" and p["htg_seeds"] == [1, 2]
    assert p["psnr_db_diff"] == pytest.approx(1.0, abs=0.15)
    lo, hi = p["psnr_db_diff_ci95"]
    assert lo < 1.0 < hi and hi - lo < 0.3  # paired: the image-to-image spread (10 dB) cancels
    assert global_psnr(np.array([20.0, 20.0])) == pytest.approx(20.0)
    assert global_psnr(np.array([10.0, 30.0])) == pytest.approx(10 * np.log10(2 / (0.1 + 0.001)))
    assert paired_comparisons(rows) == [p]  # fixed RNG seed: the same interval every run


def test_calibration_seeds_must_differ_from_the_evaluation_noise():
    assert QualityConfig().seeds == (1,) and QualityConfig(calib_seeds=(1, 2, 3)).seeds == (1, 2, 3)
    with pytest.raises(DitqError, match="--calib-seeds"):
        QualityConfig(calib_seeds=(0, 1))


def test_calibration_size_flags_reach_the_grid_config(tmp_path, monkeypatch, capsys):
    import ditq.bench.quality_grid as grid
    from ditq.cli.main import main

    seen = {}

    def fake_grid(out, config, force=False, progress=None):
        seen["config"] = config
        raise SystemExit(0)  # stop before any model is loaded

    monkeypatch.setattr(grid, "run_quality_grid", fake_grid)
    with pytest.raises(SystemExit):
        main(["-q", "bench", "quality", "-o", str(tmp_path / "q"), "--calib-steps", "40", "--calib-samples", "32"])
    assert (seen["config"].calib_steps, seen["config"].calib_samples) == (40, 32)
    with pytest.raises(SystemExit):
        main(["-q", "bench", "quality", "-o", str(tmp_path / "q")])
    assert (seen["config"].calib_steps, seen["config"].calib_samples) == (None, None)  # each method's own
    with pytest.raises(SystemExit) as err:
        main(["bench", "quality", "-o", str(tmp_path / "q"), "--calib-samples", "0"])
    assert err.value.code == 2 and "--calib-samples" in capsys.readouterr().err
