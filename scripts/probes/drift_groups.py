"""End-to-end probe (issue 13): in which timestep group does a static recipe's clipping send trajectories off?

Calibrates a method as ``ditq bench quality`` does (100 x 16, calibration seed SEED; cached under /tmp), then
samples IMAGES images at STEPS steps on the FP reference's noise with every static activation range of one group
widened by FACTOR (default 1.6: nothing clips), one group at a time, and with all groups widened. Prints PSNR
global / mean and the worst images per variant.
Usage: python scripts/probes/drift_groups.py MODEL STEPS IMAGES SEED [METHOD] [FACTOR]
"""

import sys

import torch
from _common import cached_recipe, psnr_row, scale_group

from ditq.models.loading import load_model
from ditq.runtime.backends.fake_quant import fake_quant_backend
from ditq.testbed.scoring import SamplingSpec, fp_reference, run_sampler


def main() -> None:
    src, steps, images, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    entry = sys.argv[5] if len(sys.argv) > 5 else "htg"
    factor = float(sys.argv[6]) if len(sys.argv) > 6 else 1.6
    torch.set_num_threads(1)
    model = load_model(src)
    spec = SamplingSpec(steps=steps, cfg_scale=3.0, seed=0)
    labels = torch.arange(images) % model.num_conditions
    ref = fp_reference(model, labels, spec)
    recipe = cached_recipe(model, src, entry, seed)
    base = dict(recipe.tensors)

    def run(label: str, widened: set[int]) -> None:
        recipe.tensors = {k: (v * factor if k.endswith(".act_scale") and scale_group(k) in widened else v)
                          for k, v in base.items()}
        psnr_row(label, run_sampler(model, fake_quant_backend(model, recipe), labels, spec), ref)

    print(f"{entry} seed {seed}, {steps} steps, groups " + " ".join(f"g{g.group_id}={list(g.interval)}"
                                                                    for g in recipe.groups))
    run("as calibrated", set())
    for g in recipe.groups:
        run(f"g{g.group_id} x{factor}", {g.group_id})
    run(f"all x{factor}", {g.group_id for g in recipe.groups})


main()
