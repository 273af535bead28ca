"""End-to-end probe (issue 13): HTG's reservoir ranges against exact ranges, mixed per timestep group.

``rotation_ranges="exact"`` changes only the rotated sites' activation scales after the same solve, so one
calibration per mode (100 x 16, calibration seed SEED, as ``ditq bench quality``; cached under /tmp) gives both
scale sets of one recipe. Each variant takes the exact scales in the groups it names and the reservoir's elsewhere,
and samples IMAGES images at every step count of STEPS (comma-separated) on the FP reference's noise.
Usage: python scripts/probes/drift_ranges.py MODEL STEPS IMAGES SEED
"""

import sys

import torch
from _common import exact_in, psnr_row, range_pair

from ditq.models.loading import load_model
from ditq.runtime.backends.fake_quant import fake_quant_backend
from ditq.testbed.scoring import SamplingSpec, fp_reference, run_sampler


def main() -> None:
    src, steps, images, seed = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    torch.set_num_threads(1)
    model = load_model(src)
    labels = torch.arange(images) % model.num_conditions
    res, exact = range_pair(model, src, seed)
    n = res.num_groups
    ratio = [max(float(exact.tensors[k] / res.tensors[k]) for k in res.tensors
                 if k.startswith(f"g{g}/") and k.endswith(".act_scale")) for g in range(n)]
    print(f"{src} seed {seed}: groups " + " ".join(f"g{g.group_id}={list(g.interval)}" for g in res.groups)
          + "; largest exact/reservoir scale per group " + " ".join(f"{r:.2f}" for r in ratio), flush=True)
    variants = {"reservoir": set(), "exact": set(range(n)), "exact except g0": set(range(1, n)),
                "exact g0 only": {0}}
    base = res.tensors
    for s in (int(v) for v in steps.split(",")):
        spec = SamplingSpec(steps=s, cfg_scale=3.0, seed=0)
        ref = fp_reference(model, labels, spec)
        for label, groups in variants.items():
            res.tensors = exact_in(base, exact, groups)
            psnr_row(f"{s:4d} steps {label}", run_sampler(model, fake_quant_backend(model, res), labels, spec), ref)
    res.tensors = base


main()
