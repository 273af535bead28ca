"""End-to-end probe (issue 13): in which timestep group does a static recipe's clipping send trajectories off?

Calibrates a method as ``ditq bench quality`` does (100 x 16, calibration seed SEED; cached under /tmp), then
samples IMAGES images at STEPS steps on the FP reference's noise with every static activation range of one group
widened by FACTOR (default 1.6: nothing clips), one group at a time, and with all groups widened. Prints PSNR
global / mean and the worst images per variant.
Usage: python scripts/probes/drift_groups.py MODEL STEPS IMAGES SEED [METHOD] [FACTOR]
"""

import sys
from pathlib import Path

import torch

from ditq.artifacts.recipe import Recipe
from ditq.bench.quality_grid.config import parse_method
from ditq.calibration.calibrate import CalibConfig, calibrate
from ditq.calibration.methods import method_config
from ditq.core.metrics import image_mse
from ditq.models.loading import load_model
from ditq.runtime.backends.fake_quant import group_denoiser
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
    cache = Path("/tmp/ditq_drift") / "".join(c if c.isalnum() else "_" for c in f"{src}_{entry}_{seed}")
    if (cache / "manifest.json").exists():
        recipe = Recipe.load(cache)
    else:
        name, params = parse_method(entry)
        recipe = calibrate(model, method_config(name, **params), CalibConfig(seed=seed, progress=False))
        recipe.save(cache, force=True)
    base = dict(recipe.tensors)

    def run(label: str, widened: set[int]) -> None:
        recipe.tensors = {k: (v * factor if k.endswith(".act_scale") and int(k[1:k.index("/")]) in widened else v)
                          for k, v in base.items()}
        dens = [group_denoiser(model, recipe, g.group_id) for g in recipe.groups]
        with torch.no_grad():
            out = run_sampler(model, lambda x, t, y: dens[recipe.group_of(float(t[0]))].predict(x, t, y),
                              labels, spec)
        mse = image_mse(out, ref.images)
        psnr = -10 * torch.log10(mse)
        order = torch.argsort(psnr)
        print(f"{label:22s} global {float(-10 * torch.log10(mse.mean())):6.2f}  mean {float(psnr.mean()):6.2f}  "
              "worst " + ", ".join(f"{int(i)} ({float(psnr[i]):.1f})" for i in order[:3]), flush=True)

    print(f"{entry} seed {seed}, {steps} steps, groups " + " ".join(f"g{g.group_id}={list(g.interval)}"
                                                                    for g in recipe.groups))
    run("as calibrated", set())
    for g in recipe.groups:
        run(f"g{g.group_id} x{factor}", {g.group_id})
    run(f"all x{factor}", {g.group_id for g in recipe.groups})


main()
