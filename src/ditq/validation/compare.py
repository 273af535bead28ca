"""Polygraphy-based accuracy comparison of exported ONNX graphs against torch golden outputs.

For one timestep group the caller supplies the feeds and the torch golden outputs; every graph (FP
``reference.onnx``, the group's QDQ graph, ...) is run with Polygraphy's ONNX Runtime runner (CPU) and
scored twice against the golden outputs: with ditq's own :func:`metrics` (the numbers the thresholds
gate) and with Polygraphy's ``Comparator.compare_accuracy`` (cosine-similarity and SNR compare funcs at
the same thresholds, checked per iteration). Everything is written in Polygraphy's JSON formats, so a
failing group can be replayed and bisected with the Polygraphy CLI::

    polygraphy run group3.onnx --onnxrt --load-inputs inputs.json --load-outputs golden.json
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx
from polygraphy.comparator import Comparator, IterationResult, RunResults
from polygraphy.exception import PolygraphyException
from polygraphy.json import save_json
from polygraphy.logger import G_LOGGER

from ditq.core.metrics import cosine_np, sqnr_db_np
from ditq.errors import DitqError

Feed = Mapping[str, np.ndarray]

# The first Polygraphy on PyPI with CosineSimilarityCompareFunc / SnrCompareFunc, a list as ``compare_func`` and
# several names after the CLI's ``--compare``: 0.50.3 and 0.49.x (0.49.27 ships in NVIDIA's TensorRT tree) have
# none of these (one callable; ``--compare`` takes one built-in name). pyproject.toml pins the same floor.
POLYGRAPHY_MIN = "0.53.4"


def compare_funcs(min_cosine: float, min_sqnr_db: float) -> list[object]:
    """Polygraphy's cosine-similarity and SNR compare funcs at ditq's floors (for ``compare_accuracy``); a one-line
    DitqError naming the upgrade on a Polygraphy older than :data:`POLYGRAPHY_MIN`."""
    import polygraphy
    from polygraphy import comparator

    cosine, snr = (getattr(comparator, n, None) for n in ("CosineSimilarityCompareFunc", "SnrCompareFunc"))
    if cosine is None or snr is None:
        raise DitqError(f"polygraphy {polygraphy.__version__} has no CosineSimilarityCompareFunc/SnrCompareFunc; "
                        f"pip install 'polygraphy>={POLYGRAPHY_MIN}'")
    return [cosine(min_cosine), snr(min_sqnr_db)]


@contextmanager
def polygraphy_logging(quiet: bool = True) -> Iterator[None]:
    """Polygraphy's logger under ditq's verbosity: silent when ``quiet`` (ditq's own summary reports failed
    comparisons) unless the ``ditq`` logger is at DEBUG (``ditq --debug``), then Polygraphy's INFO log; never
    coloured (no "'colored' module is not installed" warning)."""
    colors = G_LOGGER.colors
    G_LOGGER.colors = False
    verbose = not quiet or logging.getLogger(__name__).isEnabledFor(logging.DEBUG)
    try:
        with G_LOGGER.verbosity(G_LOGGER.INFO if verbose else G_LOGGER.CRITICAL):
            yield
    finally:
        G_LOGGER.colors = colors


_RESERVED_NAMES = frozenset({"inputs", "golden"})  # file names compare_group writes itself


@dataclass(frozen=True)
class Metrics:
    cosine: float  # min over iterations of the cosine similarity of the flattened outputs
    sqnr_db: float  # 10*log10(sum(ref^2) / sum((out-ref)^2)) over all iterations; inf when identical
    max_abs_err: float
    mean_abs_err: float


@dataclass(frozen=True)
class GateMiss:
    """One failed gate: ``graph`` scored ``value`` on ``metric`` (a :class:`Metrics` field), below ``floor``."""

    graph: str
    metric: str  # "cosine" | "sqnr_db"
    value: float
    floor: float

    def __str__(self) -> str:
        unit = " dB" if self.metric == "sqnr_db" else ""
        return f"{self.graph} {self.metric} {self.value:.6g}{unit} < floor {self.floor:g}{unit}"


@dataclass(frozen=True)
class Thresholds:
    min_cosine: float
    min_sqnr_db: float

    def misses(self, m: Metrics, graph: str) -> tuple[GateMiss, ...]:
        """The gates ``m`` (the scores of ``graph``) fails, each with its value and floor (NaN always fails)."""
        gates = (("cosine", m.cosine, self.min_cosine), ("sqnr_db", m.sqnr_db, self.min_sqnr_db))
        return tuple(GateMiss(graph, name, value, floor) for name, value, floor in gates if not value >= floor)

    def failures(self, m: Metrics) -> tuple[str, ...]:
        """Why ``m`` misses these thresholds (empty when it passes; NaN metrics always fail)."""
        out = []
        if not m.cosine >= self.min_cosine:
            out.append(f"cosine {m.cosine:.6f} < {self.min_cosine}")
        if not m.sqnr_db >= self.min_sqnr_db:
            out.append(f"SQNR {m.sqnr_db:.2f} dB < {self.min_sqnr_db} dB")
        return tuple(out)


@dataclass(frozen=True)
class GraphComparison:
    metrics: Metrics
    thresholds: Thresholds
    failures: tuple[str, ...]  # ditq's verdict: threshold misses of `metrics`, empty when passed
    polygraphy_passed: bool  # Polygraphy's verdict: cosine + SNR compare funcs, every iteration
    results_path: Path  # Polygraphy RunResults JSON of this graph's outputs

    @property
    def passed(self) -> bool:
        return not self.failures


@dataclass(frozen=True)
class GroupComparison:
    graphs: dict[str, GraphComparison]
    out_dir: Path

    @property
    def passed(self) -> bool:
        return all(g.passed for g in self.graphs.values())

    @property
    def metrics(self) -> dict[str, Metrics]:
        return {name: g.metrics for name, g in self.graphs.items()}

    def failures(self) -> list[str]:
        return [f"{name}: {msg}" for name, g in self.graphs.items() for msg in g.failures]

    def misses(self) -> list[GateMiss]:
        return [miss for name, g in self.graphs.items() for miss in g.thresholds.misses(g.metrics, name)]


def metrics(outputs: Sequence[np.ndarray], reference: Sequence[np.ndarray]) -> Metrics:
    """Accuracy of ``outputs`` vs ``reference`` (one array per iteration), computed in float64."""
    if len(outputs) != len(reference) or not outputs:
        raise DitqError(
            f"cannot compare {len(outputs)} output(s) with {len(reference)} reference(s); "
            "pass one non-empty output per reference iteration"
        )
    outs = [np.asarray(o, dtype=np.float64) for o in outputs]
    refs = [np.asarray(r, dtype=np.float64) for r in reference]
    for i, (o, r) in enumerate(zip(outs, refs)):
        if o.shape != r.shape:
            raise DitqError(f"iteration {i}: output shape {o.shape} != reference shape {r.shape}")
    diff = np.concatenate([(o - r).ravel() for o, r in zip(outs, refs)])
    ref = np.concatenate([r.ravel() for r in refs])
    if diff.size == 0:
        raise DitqError("cannot compare empty arrays; the graph output has no elements")
    sqnr = sqnr_db_np(diff, ref)
    abs_err = np.abs(diff)
    return Metrics(
        cosine=float(np.min([cosine_np(o.ravel(), r.ravel()) for o, r in zip(outs, refs)])),
        sqnr_db=sqnr,
        max_abs_err=float(abs_err.max()),
        mean_abs_err=float(abs_err.mean()),
    )


def run_onnxrt(
    onnx_path: Path, feeds: Sequence[Feed], output_name: str, *, runner_name: str | None = None,
    fuse: bool | None = None,
) -> RunResults:
    """Run ``onnx_path`` (loaded by path, so external data works) with Polygraphy's ONNX Runtime
    runner on the CPU provider; returns a one-runner ``RunResults`` holding only ``output_name``.

    ``fuse=None`` uses Polygraphy's default session; True/False use ditq's runtime session with integer-kernel
    fusion on or off (off: exact Q/DQ arithmetic, the numerics TensorRT and the torch reference share)."""
    if not Path(onnx_path).is_file():
        raise DitqError(f"ONNX model {onnx_path} does not exist; export it first")
    if fuse is None:
        session = SessionFromOnnx(str(onnx_path), providers=["cpu"])
    else:
        from ditq.runtime.backends.onnxruntime import ort_session

        def session() -> object:
            return ort_session(Path(onnx_path), fuse=fuse)
    runner = OnnxrtRunner(session, name=runner_name)
    iterations = []
    try:
        with runner:
            for feed in feeds:
                outputs = runner.infer(dict(feed))
                if output_name not in outputs:
                    raise DitqError(
                        f"{onnx_path} has no output {output_name!r} (outputs: {list(outputs)}); "
                        "pass the graph's output name"
                    )
                iterations.append(
                    IterationResult(
                        {output_name: outputs[output_name]}, runner.last_inference_time(), runner.name
                    )
                )
    except PolygraphyException as err:
        raise DitqError(f"running {onnx_path} with ONNX Runtime failed: {err}") from err
    results = RunResults()
    results.append((runner.name, iterations))
    return results


def golden_results(outputs: Sequence[Feed], runner_name: str = "torch-golden") -> RunResults:
    """Wrap the caller's golden outputs (one ``{output_name: array}`` per iteration) as RunResults."""
    results = RunResults()
    results.add([dict(o) for o in outputs], runner_name=runner_name)
    return results


def compare_group(
    *,
    feeds: Sequence[Feed],
    golden: Sequence[Feed],
    graphs: Mapping[str, Path],
    output_name: str,
    out_dir: Path,
    thresholds: Mapping[str, Thresholds],
    fuse: Mapping[str, bool] | None = None,
    quiet: bool = True,
) -> GroupComparison:
    """Run every graph on ``feeds`` and compare it with ``golden``; writes ``inputs.json``,
    ``golden.json`` and ``<name>.json`` into ``out_dir``. Threshold misses are returned, not raised.
    ``fuse`` picks ditq's session per graph name (see ``run_onnxrt``); ``quiet`` silences Polygraphy's logging
    (its per-output stats are long; see ``polygraphy_logging``)."""
    if missing := sorted(set(graphs) - set(thresholds)):
        raise DitqError(f"no thresholds for graph(s) {missing}; give thresholds for every graph")
    if reserved := sorted(set(graphs) & _RESERVED_NAMES):
        raise DitqError(f"graph name(s) {reserved} clash with the files compare_group writes; rename them")
    if len(feeds) != len(golden) or not feeds:
        raise DitqError(f"got {len(feeds)} feed(s) but {len(golden)} golden output(s); pass one per feed")
    if any(output_name not in g for g in golden):
        raise DitqError(f"golden outputs lack {output_name!r}; key them by the graph's output name")

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    reference = [g[output_name] for g in golden]
    graph_results: dict[str, GraphComparison] = {}
    with polygraphy_logging(quiet):
        save_json([dict(f) for f in feeds], str(out_dir / "inputs.json"), description="validation inputs")
        golden_run = golden_results(golden)
        golden_run.save(str(out_dir / "golden.json"))
        for name, path in graphs.items():
            th = thresholds[name]
            run = run_onnxrt(path, feeds, output_name, runner_name=name, fuse=(fuse or {}).get(name))
            run.save(str(results_path := out_dir / f"{name}.json"))
            verdict = Comparator.compare_accuracy(
                [golden_run, run],  # golden first: it is the signal in Polygraphy's SNR
                compare_func=compare_funcs(th.min_cosine, th.min_sqnr_db),
            )
            m = metrics([it[output_name] for it in run[name]], reference)
            graph_results[name] = GraphComparison(m, th, th.failures(m), bool(verdict), results_path)
    return GroupComparison(graph_results, out_dir)
