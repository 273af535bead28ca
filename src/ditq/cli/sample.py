from __future__ import annotations

import argparse
import time
from pathlib import Path

from ditq.cli.args import SCHEDULER_CONFIG_HELP, UsageError, positive_int, sampling_args
from ditq.errors import DitqError

# ditq.runtime.backends.registry's names, then its deprecated aliases (kept in sync by a test; no torch import here)
BACKENDS = ("fake-quant", "onnxruntime", "tensorrt", "torch-int8", "torch")


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("artifact", help="ONNX directory, engine directory with --backend tensorrt, or a recipe "
                                    "directory with --backend fake-quant / torch-int8")
    p.add_argument("--scheduler-config", default=None, metavar="PATH", help=SCHEDULER_CONFIG_HELP)
    p.add_argument("--backend", choices=BACKENDS, default="onnxruntime",
                   help="fake-quant: torch fake quantization (the reference); onnxruntime; tensorrt; torch-int8: "
                        "real INT8 GEMMs in torch (CUDA when available); torch: deprecated name of fake-quant "
                        "(default: %(default)s)")
    p.add_argument("--fp", action="store_true", help="run the unquantized model instead")
    p.add_argument("--classes", default=None,
                   help="comma-separated class labels (DiT) or caption-table rows (PixArt); default: the first 10")
    p.add_argument("--threads", type=positive_int, default=None, help="ONNX Runtime intra-op threads")
    p.add_argument("--qdq", choices=("auto", "exact", "fused"), default="auto",
                   help="ONNX Runtime: Q/DQ as exact float arithmetic, or fused integer kernels (exact only with "
                        "VNNI: they saturate on AVX2); auto: fused only on a CPU with VNNI (default: %(default)s)")
    p.add_argument("--exact-qdq", dest="qdq", action="store_const", const="exact", help="same as --qdq exact")
    sampling_args(p, steps=100)
    p.add_argument("-o", "--output", required=True, help="PNG grid to write")
    p.add_argument("--force", action="store_true", help="replace an existing PNG file")


def parse_classes(text: str, num_classes: int, what: str = "labels") -> list[int]:
    try:
        labels = [int(c) for c in text.split(",") if c.strip()]
    except ValueError:
        raise DitqError(f"--classes must be comma-separated integers, got {text!r}") from None
    bad = [c for c in labels if not 0 <= c < num_classes]
    if not labels or bad:
        raise DitqError(f"--classes must name {what} in [0, {num_classes - 1}], got {text!r}")
    return labels


def run(args: argparse.Namespace) -> int:
    from ditq.api import Sampler
    from ditq.artifacts.outputs import output_file
    from ditq.runtime.images import save_grid

    out = Path(args.output)
    if out.suffix.lower() != ".png":
        raise DitqError(f"-o must name a .png file, got {out}")
    # the output is checked (and its staging file created) before the backend loads and the sampler runs
    with output_file(out, kind="PNG grid", force=args.force, inputs=[args.artifact]) as tmp:
        sampler = Sampler(Path(args.artifact), backend=args.backend, scheduler=args.scheduler,
                          scheduler_config=args.scheduler_config, fp=args.fp, threads=args.threads,
                          exact_qdq=None if args.qdq == "auto" else args.qdq == "exact")
        if args.steps > (most := sampler.num_train_timesteps):
            raise UsageError(f"--steps {args.steps} is more than the model's {most} training timesteps; "
                             f"use --steps <= {most}")
        conditioning = sampler.conditioning
        labels = (list(range(min(10, conditioning.num))) if args.classes is None else
                  parse_classes(args.classes, conditioning.num,
                                "labels" if conditioning.kind == "class" else "caption-table rows"))
        start = time.perf_counter()
        images = sampler(labels, steps=args.steps, cfg_scale=args.cfg, seed=args.seed)
        seconds = time.perf_counter() - start
        save_grid([images], tmp)
    print(f"{out}: {len(labels)} samples, {args.steps} steps, backend {sampler.backend.name}, "
          f"calls per group {sampler.backend.calls}, {seconds:.1f} s")
    return 0
