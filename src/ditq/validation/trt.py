"""``ditq validate --trt ENGINE_DIR``: every engine on the feeds of the ONNX validation, with Polygraphy's TensorRT
runner.

It runs after :func:`ditq.validation.run.validate`, which leaves ``OUT/group_{g}/inputs.json`` (the feeds),
``golden.json`` (torch FP outputs) and ``onnxrt-qdq.json`` (ONNX Runtime on the QDQ graph). Each group's plan is
loaded with ``EngineFromBytes`` and run by ``TrtRunner`` on the same feeds; its outputs (``tensorrt.json``) are
scored against the golden outputs and against the ONNX Runtime QDQ outputs with the QDQ graph's thresholds, and
``validation.json`` gains a ``tensorrt`` entry per group. Replay one group with the Polygraphy CLI::

    polygraphy run ENGINES/group_0.plan --model-type engine --trt \\
        --load-inputs OUT/group_0/inputs.json --load-outputs OUT/group_0/golden.json
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from polygraphy.comparator import Comparator, IterationResult, RunResults
from polygraphy.exception import PolygraphyException
from polygraphy.json import load_json

from ditq._deps import require_tensorrt, trt, trt_logger
from ditq.artifacts import manifest_sha256
from ditq.artifacts.engines import EngineArtifact
from ditq.artifacts.onnx import OnnxArtifact
from ditq.errors import DitqError
from ditq.validation.compare import Thresholds, compare_funcs, metrics, polygraphy_logging

OUTPUT = "sample"
QDQ_RUN = "onnxrt-qdq"  # the ONNX validation's name (and file) for the group's QDQ graph
NAME = "tensorrt"


def run_trt(plan: Path, feeds: Sequence[Mapping[str, np.ndarray]], output_name: str = OUTPUT, *,
            runner_name: str = NAME) -> RunResults:
    """Run a serialized engine on ``feeds`` with Polygraphy's ``TrtRunner``; inputs are cast to the engine's
    dtypes (an FP16 engine takes FP16 inputs), outputs come back as float32."""
    require_tensorrt()
    from polygraphy.backend.trt import EngineFromBytes, TrtRunner
    from polygraphy.datatype import DataType

    iterations = []
    try:
        # ditq's runtime with the process's one TensorRT logger (TensorRT keeps the first it sees: were it
        # Polygraphy's, a later `build` in this process would lose its error messages)
        runtime = trt.Runtime(trt_logger())
        with TrtRunner(EngineFromBytes(Path(plan).read_bytes(), runtime=runtime), name=runner_name) as runner:
            meta = runner.get_input_metadata(use_numpy_dtypes=False)
            for feed in feeds:
                cast = {n: np.asarray(a).astype(DataType.to_dtype(meta[n].dtype, "numpy")) for n, a in feed.items()}
                outputs = runner.infer(cast)
                if output_name not in outputs:
                    raise DitqError(f"{plan} has no output {output_name!r} (outputs: {list(outputs)}); rebuild it")
                iterations.append(IterationResult({output_name: np.asarray(outputs[output_name], dtype=np.float32)},
                                                  runner.last_inference_time(), runner.name))
    except PolygraphyException as err:
        raise DitqError(f"running {plan} with TensorRT failed: {' '.join(str(err).split())}") from err
    results = RunResults()
    results.append((runner_name, iterations))
    return results


def _outputs(path: Path) -> list[np.ndarray]:
    if not path.is_file():
        raise DitqError(f"{path} is missing; run `ditq validate` without --trt into the same -o directory first")
    run = RunResults.load(str(path))
    return [np.asarray(it[OUTPUT]) for it in run[0][1]]


def open_engines(engine_dir: Path, onnx: OnnxArtifact) -> EngineArtifact:
    """The engine set, refused unless it runs here (plans, TensorRT, GPU) and was built from ``onnx``."""
    engines = EngineArtifact.load(Path(engine_dir))
    if engines.parent_sha256 != manifest_sha256(onnx.root):
        raise DitqError(f"the engines in {engine_dir} were not built from {onnx.root} (parent sha256 differs); "
                        f"{engines.rebuild_hint()}")
    return engines


def validate_trt(engine_dir: Path | EngineArtifact, onnx: OnnxArtifact, report: dict[str, Any], out: Path,
                 thresholds: Thresholds) -> dict[str, Any]:
    """Add the engines' scores to ``report`` (from ``validate``) and rewrite ``out/validation.json``.
    ``engine_dir``: the engine directory, or the set :func:`open_engines` already checked (plans hashed once)."""
    engines = engine_dir if isinstance(engine_dir, EngineArtifact) else open_engines(engine_dir, onnx)
    engine_dir = engines.root
    lo, hi = engines.batch_range
    for entry in report["groups"]:
        g = int(entry["group"])
        gdir = Path(out) / f"group_{g}"
        if not (gdir / "inputs.json").is_file():
            raise DitqError(f"{gdir / 'inputs.json'} is missing; run `ditq validate` into {out} first")
        feeds = load_json(str(gdir / "inputs.json"))
        if bad := sorted({int(f["hidden_states"].shape[0]) for f in feeds} - set(range(lo, hi + 1))):
            raise DitqError(f"validation batch {bad} is outside the engines' profile [{lo}, {hi}]; rebuild with "
                            f"`ditq build --max-batch {max(*bad, hi)}`")
        golden, qdq = _outputs(gdir / "golden.json"), _outputs(gdir / f"{QDQ_RUN}.json")
        with polygraphy_logging():
            run = run_trt(engines.path(g), feeds)
            run.save(str(gdir / f"{NAME}.json"))
            golden_run = RunResults.load(str(gdir / "golden.json"))
            verdict = Comparator.compare_accuracy(
                [golden_run, run], compare_func=compare_funcs(thresholds.min_cosine, thresholds.min_sqnr_db))
        outs = [np.asarray(it[OUTPUT]) for it in run[NAME]]
        scores = {NAME: metrics(outs, golden), f"{NAME}-vs-{QDQ_RUN}": metrics(outs, qdq)}
        failures = [f"{name}: {msg}" for name, m in scores.items() for msg in thresholds.failures(m)]
        entry["metrics"].update({name: asdict(m) for name, m in scores.items()})
        entry.setdefault("polygraphy_passed", {})[NAME] = bool(verdict)
        entry["failures"] = [*entry.get("failures", []), *failures]
        entry["passed"] = bool(entry.get("passed", True)) and not failures
    report["thresholds"][NAME] = asdict(thresholds)
    report["tensorrt"] = {"engines": str(engine_dir), "version": engines.trt_version, "device": engines.device}
    report["passed"] = all(g["passed"] for g in report["groups"])
    (Path(out) / "validation.json").write_text(json.dumps(report, indent=2, default=float) + "\n")
    return report
