"""``ditq bench speed`` pieces on the tiny model: fusion counts, sizes, timings, files; the CLI in-process."""

import json

import pytest
import torch

from ditq.bench.speed import (
    BenchModel,
    SpeedConfig,
    bench_onnx_artifact,
    bench_torch,
    format_markdown,
    fusion_report,
    graph_bytes,
    machine_info,
    ort_latency_ms,
    time_interleaved,
    write_results,
)
from ditq.cli.main import main
from ditq.errors import DitqError

TINY_CFG = SpeedConfig(models=("tiny",), batches=(1, 2), threads=1, warmup=1, repeats=2, sampling_steps=2,
                       sampling_batch=1, sampling_repeats=1, backends=("onnxruntime", "torch-int8"))


def test_every_quantized_gemm_is_fused_into_an_integer_kernel(tiny_onnx):
    q = fusion_report(tiny_onnx.path(0), threads=1)
    assert q["quantized_linears"] == 12  # 2 blocks x (q, k, v, out, fc1, fc2)
    assert q["fused"] == 12 and q["unfused"] == 0, q["op_counts"]
    assert q["fused_ops"] == {"MatMulIntegerToFloat": 12}
    fp = fusion_report(tiny_onnx.path(None), threads=1)
    assert fp["quantized_linears"] == fp["fused"] == fp["unfused"] == 0 and fp["float_gemms"] > 0


def test_int8_graph_is_smaller(tiny_onnx):
    fp, q = graph_bytes(tiny_onnx.path(None)), graph_bytes(tiny_onnx.path(0))
    assert 0 < q["total_bytes"] < fp["total_bytes"]


def test_time_interleaved_stats():
    stats = time_interleaved({"a": lambda: None, "b": lambda: sum(range(1000))}, warmup=1, repeats=5)
    for s in stats.values():
        assert s["repeats"] == 5 and s["p10_ms"] <= s["median_ms"] <= s["p90_ms"] and "cpu_median_ms" in s


def test_ort_latency_ms_keeps_its_signature(tiny_onnx):
    lat = ort_latency_ms(tiny_onnx.path(0), (1, 8, 8), batch=2, threads=1, warmup=1, repeats=3, num_classes=10)
    assert lat["batch"] == 2 and lat["repeats"] == 3 and lat["median_ms"] > 0


def test_onnx_and_torch_pairs_and_the_files(tiny_model, tiny_recipe, tiny_onnx, tmp_path):
    bm = BenchModel("tiny", tiny_model, "random")
    ort_res = bench_onnx_artifact(bm, tiny_onnx, TINY_CFG)
    assert [r["batch"] for r in ort_res["rows"]] == [1, 2]
    assert all(r["ratio"] > 0 and r["fp"]["repeats"] == 2 for r in ort_res["rows"])
    assert ort_res["fusion"]["int8"]["fused"] == 12
    assert sum(ort_res["sampling"]["group_calls"]) == 2
    torch_res = bench_torch(bm, tiny_recipe, TINY_CFG)
    assert [r["batch"] for r in torch_res["rows"]] == [1, 2] and torch_res["weights_bytes"]["int8_shared_saving"] > 0
    entry = {"name": "tiny", "source": "x", "weights": "random", "note": "", "params": 1000, "tokens": 16,
             "hidden": 32, "layers": 2, "sample_shape": [1, 8, 8],
             "calibration": {"method": "htg", "groups": 3, "seconds": 1.0}, "backends": [ort_res, torch_res]}
    result = {"kind": "ditq.bench.speed", "config": TINY_CFG.__dict__, "machine": machine_info(TINY_CFG),
              "models": [entry]}
    write_results(result, tmp_path)
    assert json.loads((tmp_path / "speed.json").read_text())["models"][0]["backends"][0]["backend"] == "onnxruntime"
    md = (tmp_path / "speed.md").read_text()
    assert md == format_markdown(result) and "| tiny |" in md and "12 of 12 quantized GEMMs fused" in md


def test_config_rejects_bad_values():
    with pytest.raises(DitqError, match="batches"):
        SpeedConfig(batches=(0,))
    with pytest.raises(DitqError, match="backend"):
        SpeedConfig(backends=("tensorrt",))


def test_cli_bad_batch_is_one_line_error(capsys, tmp_path):
    with pytest.raises(SystemExit) as exc:  # a usage error: argparse exits 2
        main(["bench", "speed", "--batches", "0", "-o", str(tmp_path / "out")])
    assert exc.value.code == 2 and not (tmp_path / "out").exists()
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "error" in err


def test_cli_torch_pair_end_to_end(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["-q", "bench", "speed", "--models", "tiny", "--backends", "torch-int8", "--batches", "1",
                 "--threads", "1", "--repeats", "1", "--warmup", "0", "--sampling-steps", "1", "--sampling-batch", "1",
                 "-o", str(out)]) == 0
    result = json.loads((out / "speed.json").read_text())
    assert result["models"][0]["backends"][0]["rows"][0]["batch"] == 1
    assert "| tiny |" in (out / "speed.md").read_text()


def test_architectures():
    from diffusers import DiTTransformer2DModel

    from ditq.models.configs import ARCH_CONFIGS, num_tokens, random_dit

    with torch.device("meta"):
        s2 = DiTTransformer2DModel(**ARCH_CONFIGS["dit-s2-like"])
        xl = DiTTransformer2DModel(**ARCH_CONFIGS["dit-xl2-256"])
    assert sum(p.numel() for p in s2.parameters()) >= 20_000_000 and num_tokens(ARCH_CONFIGS["dit-s2-like"]) == 256
    assert xl.config.num_layers == 28 and xl.inner_dim == 1152 and num_tokens(ARCH_CONFIGS["dit-xl2-512"]) == 1024
    tiny = random_dit("tiny")
    assert all(p.any() for p in tiny.parameters())  # adaLN / proj_out are re-drawn, not zero


def test_profile_and_spinning_go_through_the_runtime_session_builder(tiny_onnx):
    from ditq.bench.speed.ort import ort_feeds, ort_profile
    from ditq.runtime.backends import ort_session

    sess = ort_session(tiny_onnx.path(0), 1, spinning=False)
    assert sess.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == "0"
    prof = ort_profile(tiny_onnx.path(0), ort_feeds((1, 8, 8), 2), 1, spinning=False, runs=1)
    assert len(prof["run_ms"]) == 1 and prof["ops"] and all(0 < o["share"] <= 1 for o in prof["ops"])


def test_sampling_timing_uses_the_shared_sampling_spec():
    from ditq.testbed.scoring import SamplingSpec

    assert TINY_CFG.sampling_spec == SamplingSpec(steps=2, cfg_scale=3.0, seed=0, scheduler="ddim")


def test_quick_recipe_takes_method_options(tiny_model):
    """``--method 'htg:act="token"'``: the quick recipe is HTG with per-token activations (the same syntax as the
    quality bench), and a plain name keeps the bench's group count."""
    from ditq.bench.speed.models import BenchModel, quick_recipe

    bm = BenchModel("tiny", tiny_model, "random")
    recipe, info = quick_recipe(bm, SpeedConfig(method='htg:act="token"', groups=2))
    assert info["method"] == 'htg:act="token"' and recipe.params["act"] == "token" and recipe.params["groups"] == 2
    assert all(recipe.linear_spec(lin).act == "dynamic_token" for s in recipe.sites for lin in s.linears)
    static, _ = quick_recipe(bm, SpeedConfig(method="htg:groups=1"))
    assert static.num_groups == 1 and not static.dynamic_activations
