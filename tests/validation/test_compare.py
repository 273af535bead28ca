"""Tests for the Polygraphy comparison engine on a tiny hand-built ONNX model."""

from __future__ import annotations

import math
import shutil
import subprocess
import sys
from functools import partial
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from polygraphy.comparator import RunResults
from polygraphy.json import load_json

from ditq.errors import DitqError
from ditq.validation.compare import Metrics, Thresholds, compare_group, golden_results, metrics, run_onnxrt

THRESHOLDS = Thresholds(min_cosine=0.999, min_sqnr_db=30.0)


def _model(path: Path, scale: float) -> Path:
    """sample = hidden_states * scale + reshape(timestep + 0.01 * class_labels, [B,1,1,1]).

    ``scale`` (256 bytes) is stored as external data next to the model, like the real exports."""
    f = TensorProto.FLOAT
    nodes = [
        helper.make_node("Mul", ["hidden_states", "scale"], ["scaled"]),
        helper.make_node("Cast", ["class_labels"], ["labels_f"], to=f),
        helper.make_node("Mul", ["labels_f", "label_w"], ["labels_w"]),
        helper.make_node("Add", ["timestep", "labels_w"], ["cond"]),
        helper.make_node("Reshape", ["cond", "cond_shape"], ["cond4"]),
        helper.make_node("Add", ["scaled", "cond4"], ["sample"]),
    ]
    inits = [
        numpy_helper.from_array(np.full((1, 1, 8, 8), scale, np.float32), "scale"),
        numpy_helper.from_array(np.array([0.01], np.float32), "label_w"),
        numpy_helper.from_array(np.array([-1, 1, 1, 1], np.int64), "cond_shape"),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_dit",
        [
            helper.make_tensor_value_info("hidden_states", f, ["B", 1, 8, 8]),
            helper.make_tensor_value_info("timestep", f, ["B"]),
            helper.make_tensor_value_info("class_labels", TensorProto.INT64, ["B"]),
        ],
        [helper.make_tensor_value_info("sample", f, ["B", 1, 8, 8])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save_model(
        model, str(path), save_as_external_data=True, location=f"{path.stem}.data", size_threshold=128
    )
    return path


def _feeds(n: int = 3, batch: int = 2) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    return [
        {
            "hidden_states": rng.standard_normal((batch, 1, 8, 8)).astype(np.float32),
            "timestep": rng.uniform(0, 1000, batch).astype(np.float32) / 1000,
            "class_labels": rng.integers(0, 10, batch).astype(np.int64),
        }
        for _ in range(n)
    ]


def _golden(feeds: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    out = []
    for f in feeds:
        cond = f["timestep"] + np.float32(0.01) * f["class_labels"].astype(np.float32)
        out.append({"sample": f["hidden_states"] * np.float32(2.0) + cond.reshape(-1, 1, 1, 1)})
    return out


@pytest.fixture(scope="module")
def group(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("compare")
    graphs = {"exact": _model(tmp / "exact.onnx", 2.0), "perturbed": _model(tmp / "perturbed.onnx", 2.3)}
    feeds = _feeds()
    result = compare_group(
        feeds=feeds,
        golden=_golden(feeds),
        graphs=graphs,
        output_name="sample",
        out_dir=tmp / "out",
        thresholds={"exact": THRESHOLDS, "perturbed": THRESHOLDS},
    )
    return result, graphs, feeds


def test_exact_graph_passes(group) -> None:
    result, _, _ = group
    exact = result.graphs["exact"]
    assert exact.metrics.cosine == pytest.approx(1.0, abs=1e-6)
    assert exact.metrics.sqnr_db > 100
    assert exact.metrics.max_abs_err < 1e-5
    assert exact.passed and exact.polygraphy_passed and not exact.failures


def test_perturbed_graph_fails_threshold(group) -> None:
    result, _, _ = group
    bad = result.graphs["perturbed"]
    assert bad.metrics.sqnr_db < THRESHOLDS.min_sqnr_db
    assert not bad.passed and not bad.polygraphy_passed
    assert any("SQNR" in msg for msg in bad.failures)
    assert not result.passed
    assert result.failures() == [f"perturbed: {msg}" for msg in bad.failures]
    assert set(result.metrics) == {"exact", "perturbed"}


def test_files_are_polygraphy_formats(group) -> None:
    result, _, feeds = group
    inputs = load_json(str(result.out_dir / "inputs.json"))
    assert len(inputs) == len(feeds)
    for loaded, feed in zip(inputs, feeds):
        assert loaded.keys() == feed.keys()
        for name in feed:
            np.testing.assert_array_equal(loaded[name], feed[name])
    golden = RunResults.load(str(result.out_dir / "golden.json"))
    assert list(golden.keys()) == ["torch-golden"] and len(golden["torch-golden"]) == len(feeds)
    exact = RunResults.load(str(result.graphs["exact"].results_path))
    assert list(exact.keys()) == ["exact"] and list(exact["exact"][0].keys()) == ["sample"]


def _polygraphy_cli() -> list[str]:
    script = Path(sys.executable).parent / "polygraphy"
    found = str(script) if script.is_file() else shutil.which("polygraphy")
    if found is None:
        pytest.skip("the polygraphy CLI is not installed")
    return [found]


@pytest.mark.parametrize(("name", "expect_ok"), [("exact", True), ("perturbed", False)])
def test_polygraphy_cli_replays_saved_files(group, name: str, expect_ok: bool) -> None:
    result, graphs, _ = group
    cmd = [
        *_polygraphy_cli(),
        "run",
        str(graphs[name]),
        "--onnxrt",
        "--load-inputs",
        str(result.out_dir / "inputs.json"),
        "--load-outputs",
        str(result.out_dir / "golden.json"),
        "--atol",
        "1e-5",
        "--rtol",
        "1e-5",
    ]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=120)
    log = proc.stdout + proc.stderr
    assert "Accuracy Summary" in log, log[-3000:]  # it got as far as comparing
    assert (proc.returncode == 0) == expect_ok, log[-3000:]


def test_metrics_known_sqnr() -> None:
    ref = [np.array([3.0, 4.0]), np.array([0.0, 5.0])]
    out = [np.array([3.3, 4.4]), np.array([0.5, 5.0])]  # noise energy 0.5 vs signal 50 -> 20 dB
    m = metrics(out, ref)
    assert m.sqnr_db == pytest.approx(20.0, abs=1e-9)
    assert m.cosine == pytest.approx(25.0 / (5.0 * math.sqrt(25.25)))  # min: the second iteration
    assert m.max_abs_err == pytest.approx(0.5)
    assert m.mean_abs_err == pytest.approx(0.3)


def test_metrics_edge_cases() -> None:
    a = [np.arange(6, dtype=np.float32).reshape(2, 3)]
    assert metrics(a, a) == Metrics(cosine=1.0, sqnr_db=math.inf, max_abs_err=0.0, mean_abs_err=0.0)
    nan = metrics([np.array([np.nan, 1.0])], [np.array([1.0, 1.0])])
    assert THRESHOLDS.failures(nan)  # NaN never passes
    with pytest.raises(DitqError, match="shape"):
        metrics([np.zeros(3)], [np.zeros(4)])
    with pytest.raises(DitqError):
        metrics([np.zeros(3)], [])


def test_run_onnxrt_and_golden_results(tmp_path: Path) -> None:
    model = _model(tmp_path / "m.onnx", 2.0)
    feeds = _feeds(n=2)
    run = run_onnxrt(model, feeds, "sample", runner_name="ref")
    assert list(run.keys()) == ["ref"] and len(run["ref"]) == 2
    np.testing.assert_allclose(run["ref"][1]["sample"], _golden(feeds)[1]["sample"], rtol=1e-6)
    assert list(golden_results(_golden(feeds)).keys()) == ["torch-golden"]
    with pytest.raises(DitqError, match="no output"):
        run_onnxrt(model, feeds, "missing")
    with pytest.raises(DitqError, match="does not exist"):
        run_onnxrt(tmp_path / "nope.onnx", feeds, "sample")


def test_compare_group_rejects_bad_arguments(tmp_path: Path) -> None:
    model = _model(tmp_path / "m.onnx", 2.0)
    feeds = _feeds(n=1)
    run = partial(compare_group, feeds=feeds, golden=_golden(feeds), output_name="sample", out_dir=tmp_path)
    with pytest.raises(DitqError, match="no thresholds"):
        run(graphs={"m": model}, thresholds={})
    with pytest.raises(DitqError, match="clash"):
        run(graphs={"golden": model}, thresholds={"golden": THRESHOLDS})
    with pytest.raises(DitqError, match="lack 'sample'"):
        run(graphs={"m": model}, thresholds={"m": THRESHOLDS}, golden=[{"out": np.zeros(1)}])


def test_compare_funcs_refuse_a_polygraphy_without_them(monkeypatch: pytest.MonkeyPatch) -> None:
    """Polygraphy 0.49.x (NVIDIA's TensorRT tree) has no CosineSimilarityCompareFunc: one line naming the floor."""
    import polygraphy.comparator

    from ditq.validation.compare import POLYGRAPHY_MIN, compare_funcs

    assert len(compare_funcs(0.9, 20.0)) == 2
    monkeypatch.delattr(polygraphy.comparator, "CosineSimilarityCompareFunc")
    with pytest.raises(DitqError, match=rf"pip install 'polygraphy>={POLYGRAPHY_MIN}'"):
        compare_funcs(0.9, 20.0)


def test_pyproject_polygraphy_floor_is_the_one_compare_needs() -> None:
    import re

    from ditq.validation.compare import POLYGRAPHY_MIN

    text = (Path(__file__).resolve().parents[2] / "pyproject.toml").read_text()
    assert re.search(r'"polygraphy>=([0-9.]+)"', text).group(1) == POLYGRAPHY_MIN


@pytest.mark.parametrize(("name", "expect_ok"), [("exact", True), ("perturbed", False)])
def test_polygraphy_cli_compares_cosine_and_snr(group, name: str, expect_ok: bool) -> None:
    """The README's replay line (`--compare cosine_similarity snr`) with the Polygraphy this interpreter imports."""
    result, graphs, _ = group
    cmd = [sys.executable, "-c", "import sys; from polygraphy.tools import main; sys.exit(main())", "run",
           str(graphs[name]), "--onnxrt", "--load-inputs", str(result.out_dir / "inputs.json"),
           "--load-outputs", str(result.out_dir / "golden.json"), "--compare", "cosine_similarity", "snr",
           "--cosine-similarity-threshold", str(THRESHOLDS.min_cosine), "--snr-threshold",
           str(THRESHOLDS.min_sqnr_db)]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=120)
    log = proc.stdout + proc.stderr
    assert "Accuracy Summary" in log, log[-3000:]
    assert (proc.returncode == 0) == expect_ok, log[-3000:]
