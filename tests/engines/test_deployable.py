"""What `ditq build` refuses before starting (FP32 sets, W4A8, INT8 blocks for the installed TensorRT major), the
W4A16 sets `ditq export --target tensorrt` writes instead, and the timing-cache load check."""

from __future__ import annotations

import logging

import onnx
import pytest
import torch

from ditq.cli.main import main
from ditq.engines import BuildConfig, build_engines
from ditq.engines.build import check_deployable
from ditq.errors import DitqError

STEPS, SAMPLES = 8, 2


def _one_line_error(capsys, code: int) -> str:
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1 and "error" in err, err
    return err


@pytest.fixture(scope="module")
def sets(tiny_model, tmp_path_factory):
    """Tiny HTG sets: W4 as W4A16 (fp32 and fp16) and as W4A8 (fp16), INT8 blocks of 32 (fp16)."""
    from ditq.calibration.calibrate import CalibConfig, calibrate
    from ditq.calibration.methods import method_config
    from ditq.export.onnx_export import export_onnx, export_reference

    root = tmp_path_factory.mktemp("deployable")
    recipes = {}
    for name, bits, block in (("w4", 4, 0), ("w8block", 8, 32)):
        recipes[name] = calibrate(tiny_model, method_config("htg", groups=2),
                                  CalibConfig(steps=STEPS, samples=SAMPLES, progress=False, w_bits=bits, w_block=block))
        recipes[name].save(root / f"recipe-{name}")
    refs = {p: export_reference(tiny_model, 21, p) for p in ("fp32", "fp16")}
    out = {}
    for name, recipe, precision, target in (("w4a16-fp32", "w4", "fp32", "tensorrt"),
                                            ("w4a16", "w4", "fp16", "tensorrt"), ("w4a8", "w4", "fp16", "onnxruntime"),
                                            ("w8block", "w8block", "fp16", "onnxruntime")):
        out[name] = export_onnx(tiny_model, recipes[recipe], root / name, recipe_dir=root / f"recipe-{recipe}",
                                precision=precision, target=target, reference=refs[precision], progress=False)
    return out, recipes


def test_w4a16_export_has_weight_dq_only_and_records_it(sets):
    arts, recipes = sets
    art = arts["w4a16"]
    linears = sorted(lin for site in recipes["w4"].sites for lin in site.linears)
    assert art.target == "tensorrt" and list(art.weight_only) == linears
    assert arts["w4a8"].target == "onnxruntime" and arts["w4a8"].weight_only == ()
    graph = onnx.load(str(art.path(0)), load_external_data=False).graph
    assert not [n for n in graph.node if n.op_type == "QuantizeLinear"]  # no activation Q/DQ at all
    int4_dqs = [n for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0].endswith("weight_int4")]
    assert len(int4_dqs) == len(linears) and all(len(n.input) == 2 for n in int4_dqs)  # no INT4 zero points
    assert not [t for t in graph.initializer if t.name.endswith("w_zero_point")]
    w4a8 = onnx.load(str(arts["w4a8"].path(0)), load_external_data=False).graph
    assert len([n for n in w4a8.node if n.op_type == "QuantizeLinear"]) == len(linears)


def test_w4a16_graph_matches_validates_torch_reference(sets, tiny_model):
    """The exact Q/DQ arithmetic of the W4A16 graph is what validate's torch reference computes (folded shifts and
    scales included); the W4A8 reference differs from it."""
    from ditq.runtime.backends import group_denoiser, onnxruntime_backend
    from ditq.validation.run import reference_denoiser

    arts, recipes = sets
    art, recipe = arts["w4a16-fp32"], recipes["w4"]
    ort = onnxruntime_backend(art, fuse=False)
    gen = torch.Generator().manual_seed(1)
    for g in recipe.groups:
        x, t = torch.randn(4, 1, 8, 8, generator=gen), torch.full((4,), float(sum(g.interval) // 2))
        y = {"class_labels": torch.arange(4)}
        args = (x, t, y["class_labels"])
        with torch.no_grad():
            ref = reference_denoiser(tiny_model, recipe, art, g.group_id)(*args)
            w4a8 = group_denoiser(tiny_model, recipe, g.group_id)(*args)
            out = ort(x, t, y)
        assert float((out - ref).norm() / ref.norm()) < 1e-4
        assert float((w4a8 - ref).norm() / ref.norm()) > 1e-3


def test_fp32_set_is_refused_naming_fp16(capsys, sets, tmp_path, fake_trt):
    arts, _ = sets
    code = main(["-q", "build", str(arts["w4a16-fp32"].root), "-o", str(tmp_path / "engines")])
    err = _one_line_error(capsys, code)
    assert "FP32" in err and "--precision fp16" in err
    assert not (tmp_path / "engines").exists()


def test_w4a8_is_refused_with_the_reason_and_the_fix(capsys, sets, tmp_path, fake_trt):
    arts, _ = sets
    code = main(["-q", "build", str(arts["w4a8"].root), "-o", str(tmp_path / "engines")])
    err = _one_line_error(capsys, code)
    assert "W4A8" in err and "no INT4 x INT8 GEMM" in err and "--target tensorrt" in err
    assert not (tmp_path / "engines").exists() and not fake_trt.configs  # refused before starting


def test_w4a16_builds(sets, tmp_path, fake_trt):
    art = build_engines(sets[0]["w4a16"], tmp_path / "engines", progress=False)
    assert len(art.groups) == 2 and art.precision == "fp16"


@pytest.mark.parametrize("version, target", [("10.13.0.35", "tensorrt-10"), ("11.1.0.4", "tensorrt-11")])
def test_int8_blocks_are_refused_for_the_installed_major(sets, tmp_path, fake_trt, version, target):
    fake_trt.__version__ = version
    with pytest.raises(DitqError, match=rf"breaks {target}'s rules .*\[block-type\].*INT8"):
        build_engines(sets[0]["w8block"], tmp_path / "engines", progress=False)
    assert not fake_trt.configs


def test_static_check_without_tensorrt_uses_the_newest_rules(sets, no_tensorrt):
    arts, _ = sets
    check_deployable(arts["w4a16"])
    with pytest.raises(DitqError, match=r"tensorrt-11's rules"):
        check_deployable(arts["w8block"])


def test_export_for_tensorrt_refuses_int8_blocks(sets, tiny_model, tmp_path):
    from ditq.export.onnx_export import export_onnx

    _, recipes = sets
    with pytest.raises(DitqError, match=r"INT8 weights in blocks .*--w-block"):
        export_onnx(tiny_model, recipes["w8block"], tmp_path / "onnx", target="tensorrt", progress=False)
    assert not (tmp_path / "onnx").exists()


def test_foreign_timing_cache_warns_and_starts_empty(tiny_onnx, tmp_path, fake_trt, caplog):
    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"foreign")
    with caplog.at_level(logging.WARNING, logger="ditq.engines.build"):
        art = build_engines(tiny_onnx, tmp_path / "e", BuildConfig(timing_cache=cache), progress=False)
    assert "does not fit" in caplog.text and art.groups
    assert b"foreign" not in cache.read_bytes()  # rewritten with this machine's timings


def test_timing_cache_refused_outright_is_an_error(tiny_onnx, tmp_path, fake_trt):
    fake_trt.refuse_caches = True
    with pytest.raises(DitqError, match="refused even an empty timing cache"):
        build_engines(tiny_onnx, tmp_path / "e", progress=False)
    assert not (tmp_path / "e").exists()


def test_cli_lint_target_and_export_target(capsys, sets, tmp_path):
    arts, _ = sets
    root = arts["w8block"].root
    assert main(["-q", "lint", str(root)]) == 0  # the set's own target (onnxruntime): INT8 blocks are fine there
    assert main(["-q", "lint", str(root), "--target", "tensorrt-10"]) == 3
    assert "[block-type]" in capsys.readouterr().out
    assert main(["-q", "lint", str(arts["w4a8"].root / "group_0.onnx")]) == 3  # a bare file: the newest TensorRT
    assert "[int4-weight-only]" in capsys.readouterr().out
    recipe_dir = arts["w4a8"].recipe_dir
    assert main(["-q", "export", str(recipe_dir), "-o", str(tmp_path / "onnx"), "--precision", "fp16",
                 "--target", "tensorrt"]) == 0
    assert "weight-only (W4A16)" in capsys.readouterr().out
    assert main(["-q", "lint", str(tmp_path / "onnx"), "--target", "tensorrt-10"]) == 0
