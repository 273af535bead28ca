"""Quick end-to-end probe of static recipes: final-image PSNR vs FP (global and per-image mean) and per-step SQNR.

    PYTHONPATH=src python scripts/quality_probe.py --model demo --steps 50 --images 32 \
        htg smoothquant:alpha=0.8 'htg:alphas=[0.8]'

Each entry is ``method[:key=value...]`` (values as JSON) or ``method@seed`` for another calibration seed.
Calibration: 50 sampler steps x 8 samples, seed 1 (never the evaluation noise, seed 0) unless --calib-* say else.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("entries", nargs="+")
    p.add_argument("--model", default="demo")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--images", type=int, default=32)
    p.add_argument("--calib-steps", type=int, default=50)
    p.add_argument("--calib-samples", type=int, default=8)
    p.add_argument("--calib-seed", type=int, default=1)
    p.add_argument("--w-bits", type=int, default=8)
    p.add_argument("--w-block", type=int, default=0)
    p.add_argument("--format", dest="fmt", default="int", choices=("int", "fp8_e4m3"))
    p.add_argument("--weight-rounding", default=None, choices=("nearest", "gptq"), help="default: ditq's")
    p.add_argument("--cfg", type=float, default=3.0)
    p.add_argument("--bias-correction", choices=("on", "off"), default=None, help="default: ditq's")
    p.add_argument("--json", default=None, help="append one JSON line per entry here")
    args = p.parse_args(argv)

    from ditq.bench.quality import evaluate
    from ditq.bench.quality_grid.config import parse_method
    from ditq.calibration.calibrate import CalibConfig, calibrate
    from ditq.calibration.methods import method_config
    from ditq.models.loading import load_model
    from ditq.runtime.backends import torch_backend
    from ditq.testbed.scoring import SamplingSpec, fp_reference

    torch.set_num_threads(2)
    model = load_model(args.model)
    labels = torch.arange(args.images) % model.num_conditions
    spec = SamplingSpec(steps=args.steps, cfg_scale=args.cfg, seed=0)
    t0 = time.perf_counter()
    ref = fp_reference(model, labels, spec)
    print(f"# FP reference {time.perf_counter() - t0:.0f}s", file=sys.stderr)
    for entry in args.entries:
        entry, _, seed = entry.partition("@")
        name, params = parse_method(entry)
        t0 = time.perf_counter()
        recipe = calibrate(model, method_config(name, **params),
                           CalibConfig(steps=args.calib_steps, samples=args.calib_samples, cfg_scale=args.cfg,
                                       seed=int(seed or args.calib_seed), w_bits=args.w_bits, w_block=args.w_block,
                                       fmt=args.fmt, progress=False,
                                       **({"weight_rounding": args.weight_rounding} if args.weight_rounding else {}),
                                       **({"bias_correction": args.bias_correction == "on"}
                                          if args.bias_correction else {})))
        calib_s = time.perf_counter() - t0
        q = evaluate(model, torch_backend(model, recipe), ref, spec, None, sqnr_rows=8)
        mse = ((q["images"].clamp(-1, 1) - ref.images.clamp(-1, 1)) / 2).square().double().mean()
        global_db = float(10 * torch.log10(1.0 / mse.clamp_min(1e-12)))  # pooled over all images
        row = {"model": args.model, "entry": entry, "calib_seed": int(seed or args.calib_seed),
               "w_bits": args.w_bits, "w_block": args.w_block, "fmt": args.fmt,
               "weight_rounding": recipe.weight_rounding, "bias_correction": recipe.bias_correction,
               "psnr_global_db": round(global_db, 2),
               "psnr_mean_db": round(float(q["psnr_db"]), 2), "sqnr_mean_db": round(q["sqnr_mean_db"], 2),
               "sqnr_min_db": round(q["sqnr_min_db"], 2), "groups": recipe.num_groups,
               "calib_s": round(calib_s, 1)}
        print(json.dumps(row), flush=True)
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
