"""ONNX Runtime CPU cost of static rotation: one group graph of the same recipe with and without the rotation
MatMuls, timed interleaved in the runtime's own fused session (``ort_session(fuse=True)``).

    PYTHONPATH=src python scripts/rotation_latency.py --model demo --batch 16 --rotations 0 32 64 --repeats 40

The recipes are SmoothQuant's by default (cheap to calibrate; every site rotated: the upper bound of the cost).
``--method htg`` times HTG's recipes instead, where the criterion keeps the rotation only at the sites it prefers
(the default recipe's real cost; calibrated 4 steps x 2 samples, so the rotated sites may differ from a full run).
``--sets DIR ...`` also times group 0 of ONNX sets already exported (e.g. ``ditq bench quality``'s ``onnx/*``), the
recipes of a full calibration:

    PYTHONPATH=src python scripts/rotation_latency.py --model demo --method htg --rotations 0 --repeats 60 \
        --sets OUT_A/onnx/htg-W8A8-seed1 OUT_B/onnx/htg-W8A8-seed1
"""

from __future__ import annotations

import argparse
import collections
import json
import tempfile
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="demo")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rotations", type=int, nargs="+", default=[0, 32, 64])
    p.add_argument("--repeats", type=int, default=40)
    p.add_argument("--dense", action="store_true", help="also time each rotation as one dense k x k MatMul")
    p.add_argument("--method", choices=["smoothquant", "htg"], default="smoothquant")
    p.add_argument("--sets", nargs="*", default=[], help="exported ONNX sets whose group 0 to time as well")
    args = p.parse_args(argv)

    import onnx

    from ditq.bench.speed.machine import time_interleaved
    from ditq.bench.speed.ort import fusion_report, ort_feeds
    from ditq.calibration.calibrate import CalibConfig, calibrate
    from ditq.calibration.methods import method_config
    from ditq.export import qdq
    from ditq.export.onnx_export import export_onnx, export_reference
    from ditq.models.loading import load_model
    from ditq.runtime.backends import ort_session

    model = load_model(args.model)
    reference = export_reference(model)
    fns, ops = {}, {}

    def add(name: str, path: Path, feeds: dict) -> None:
        """Time group graph ``path`` as ``name``: a fused session, its fusion report and its exported ops."""
        sess = ort_session(path, args.threads, fuse=True)
        fns[name] = lambda s=sess: s.run(None, feeds)
        rep = fusion_report(path, args.threads)
        nodes = onnx.load(str(path), load_external_data=False).graph.node
        ops[name] = {"rotated_sites": len({n.name for n in nodes if n.name.endswith(".rotate")}),
                     "fused": rep["fused"], "unfused": rep["unfused"], "float_gemms": rep["float_gemms"],
                     "exported": dict(collections.Counter(
                         n.op_type for n in nodes if n.op_type in ("MatMul", "Reshape", "Sub", "Mul")))}

    with tempfile.TemporaryDirectory() as tmp:
        feeds = ort_feeds(model.sample_shape, args.batch, model.num_conditions)
        for rot, dense in [(r, d) for r in args.rotations for d in ([False, True] if args.dense and r else [False])]:
            recipe = calibrate(model, method_config(args.method, rotation=rot),
                               CalibConfig(steps=4, samples=2, progress=False))
            qdq.DENSE_ROTATION_BLOCKS = 1 << 30 if dense else 1
            name = f"rotation={rot}" + (" dense" if dense else "")
            art = export_onnx(model, recipe, Path(tmp) / name.replace(" ", "_"), progress=False, reference=reference)
            qdq.DENSE_ROTATION_BLOCKS = 1
            add(name, art.path(0), feeds)
        for d in args.sets:
            add(d, Path(d) / "group_0.onnx", feeds)
        stats = time_interleaved(fns, warmup=5, repeats=args.repeats)
    base = stats[f"rotation={args.rotations[0]}"]["median_ms"]
    for name, st in stats.items():
        print(json.dumps({"graph": name, "median_ms": round(st["median_ms"], 3), "p10_ms": round(st["p10_ms"], 3),
                          "p90_ms": round(st["p90_ms"], 3), "ratio": round(st["median_ms"] / base, 3),
                          "batch": args.batch, "threads": args.threads, **ops[name]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
