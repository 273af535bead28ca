"""End-to-end probe (issue 13): can the calibration itself tell which rotated ranges a model wants?

Samples N images (DDPM STEPS steps, CFG 3) on the *calibration* noise (noise seed SEED, the calibration seed,
not the evaluation's seed 0) with HTG's reservoir ranges and with ``rotation_ranges="exact_but_final"`` (one
calibration of each mode, 100 x 16 with calibration seed SEED, cached under /tmp/ditq_drift; they share every
tensor but the activation scales), and prints each one's PSNR global / mean against FP on that noise. A selection
rule "take the mode with the higher mean PSNR on the calibration noise" is right on a model if it picks the mode
that wins on the evaluation noise (``drift_ranges.py``, ``ditq bench quality``).
Usage: python scripts/probes/range_select.py MODEL SEED [STEPS [N]]
"""

import sys

import numpy as np
import torch
from _common import exact_in, psnr_row, range_pair

from ditq.bench.quality_grid.seeds import global_psnr
from ditq.models.loading import load_model
from ditq.runtime.backends.fake_quant import fake_quant_backend
from ditq.testbed.scoring import SamplingSpec, fp_reference, run_sampler


def main() -> None:
    src, seed = sys.argv[1], int(sys.argv[2])
    steps = int(sys.argv[3]) if len(sys.argv) > 3 else 100
    n = int(sys.argv[4]) if len(sys.argv) > 4 else 16
    torch.set_num_threads(1)
    model = load_model(src)
    res, exact = range_pair(model, src, seed)
    labels = torch.arange(n) % model.num_conditions
    spec = SamplingSpec(steps=steps, cfg_scale=3.0, seed=seed)
    ref = fp_reference(model, labels, spec)
    base = dict(res.tensors)
    psnr = {}
    for label, groups in (("reservoir", ()), ("exact_but_final", range(1, res.num_groups))):
        res.tensors = exact_in(base, exact, groups)
        psnr[label] = psnr_row(f"{src} seed {seed} {steps} steps {label}",
                               run_sampler(model, fake_quant_backend(model, res), labels, spec), ref).numpy()
    res.tensors = base
    d_mean = float(np.mean(psnr["exact_but_final"] - psnr["reservoir"]))
    d_global = global_psnr(psnr["exact_but_final"]) - global_psnr(psnr["reservoir"])
    print(f"exact_but_final - reservoir on the calibration noise: global {d_global:+.2f}  mean {d_mean:+.2f}  -> "
          f"picks {'exact_but_final' if d_mean > 0 else 'reservoir'}", flush=True)


main()
