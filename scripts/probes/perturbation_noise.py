"""How much the pooled image PSNR moves when nothing that matters changes (issue 13).

One HTG recipe, sampled several times with its output multiplied by (1 + eps) at every step, eps a fixed tiny
constant per run (default ±1e-4, ±2e-4, ±3e-4: about 80 dB below the output, 35 dB below the quantization error).
The step SQNR cannot tell the runs apart; the final-image PSNR vs FP can, because a few DDPM trajectories diverge on
any perturbation. The spread is the noise floor of one configuration's global / mean PSNR at this image count.
Usage: python scripts/probes/perturbation_noise.py MODEL STEPS IMAGES [CALIB_SEED] [ENTRY]
"""

import json
import statistics
import sys

import torch
from _common import calibrated_reference, end_to_end_row

from ditq.runtime.backends import fake_quant_backend

torch.set_num_threads(1)
src, steps, images = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
seed = int(sys.argv[4]) if len(sys.argv) > 4 else 1
entry = sys.argv[5] if len(sys.argv) > 5 else "htg"
model, spec, ref, recipe = calibrated_reference(src, steps, images, entry, seed)
quant = fake_quant_backend(model, recipe)
rows = []
for eps in (0.0, 1e-4, -1e-4, 2e-4, -2e-4, 3e-4, -3e-4):
    row = end_to_end_row(f"{entry}@{seed} output x (1 {eps:+.0e})", model,
                         lambda x, t, y, eps=eps: quant(x, t, y) * (1 + eps), spec, ref)
    rows.append(row)
    print(json.dumps(row), flush=True)
for key in ("global", "mean", "sqnr"):
    vals = [r[key] for r in rows]
    print(f"{key}: min {min(vals):.2f} max {max(vals):.2f} sd {statistics.stdev(vals):.2f}", flush=True)
