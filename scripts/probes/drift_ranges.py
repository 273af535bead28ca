"""End-to-end probe (issue 13): HTG's reservoir ranges against exact ranges, mixed per timestep group.

``rotation_ranges="exact"`` changes only the rotated sites' activation scales after the same solve, so one
calibration per mode (100 x 16, calibration seed SEED, as ``ditq bench quality``; cached under /tmp) gives both
scale sets of one recipe. Each variant takes the exact scales in the groups it names and the reservoir's elsewhere,
and samples IMAGES images at every step count of STEPS (comma-separated) on the FP reference's noise.
Usage: python scripts/probes/drift_ranges.py MODEL STEPS IMAGES SEED
"""

import sys
from pathlib import Path

import torch

from ditq.artifacts.recipe import Recipe
from ditq.calibration.calibrate import CalibConfig, calibrate
from ditq.calibration.methods import method_config
from ditq.core.metrics import image_mse
from ditq.models.loading import load_model
from ditq.runtime.backends.fake_quant import group_denoiser
from ditq.testbed.scoring import SamplingSpec, fp_reference, run_sampler


def cached(model, src: str, seed: int, ranges: str) -> Recipe:
    cache = Path("/tmp/ditq_drift") / "".join(c if c.isalnum() else "_" for c in f"{src}_htg_{ranges}_{seed}")
    if (cache / "manifest.json").exists():
        return Recipe.load(cache)
    recipe = calibrate(model, method_config("htg", rotation_ranges=ranges), CalibConfig(seed=seed, progress=False))
    recipe.save(cache, force=True)
    return recipe


def main() -> None:
    src, steps, images, seed = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    torch.set_num_threads(1)
    model = load_model(src)
    labels = torch.arange(images) % model.num_conditions
    res, exact = cached(model, src, seed, "reservoir"), cached(model, src, seed, "exact")
    n = res.num_groups
    assert all(torch.equal(res.tensors[k], exact.tensors[k]) for k in res.tensors if not k.endswith(".act_scale"))
    ratio = [max(float(exact.tensors[k] / res.tensors[k]) for k in res.tensors
                 if k.startswith(f"g{g}/") and k.endswith(".act_scale")) for g in range(n)]
    print(f"{src} seed {seed}: groups " + " ".join(f"g{g.group_id}={list(g.interval)}" for g in res.groups)
          + "; largest exact/reservoir scale per group " + " ".join(f"{r:.2f}" for r in ratio), flush=True)
    variants = {"reservoir": set(), "exact": set(range(n)), "exact except g0": set(range(1, n)),
                "exact g0 only": {0}}
    base = dict(res.tensors)
    for s in (int(v) for v in steps.split(",")):
        spec = SamplingSpec(steps=s, cfg_scale=3.0, seed=0)
        ref = fp_reference(model, labels, spec)
        for label, groups in variants.items():
            res.tensors = {k: (exact.tensors[k] if k.endswith(".act_scale") and int(k[1:k.index("/")]) in groups
                               else v) for k, v in base.items()}
            dens = [group_denoiser(model, res, g.group_id) for g in res.groups]
            with torch.no_grad():
                out = run_sampler(model, lambda x, t, y, dens=dens: dens[res.group_of(float(t[0]))].predict(x, t, y),
                                  labels, spec)
            psnr = -10 * torch.log10(image_mse(out, ref.images))
            torch.save(psnr, Path("/tmp/ditq_drift") / f"psnr_{Path(src).name}_{seed}_{s}_{label.replace(' ', '_')}.pt")
            order = torch.argsort(psnr)
            mse = image_mse(out, ref.images)
            print(f"{s:4d} steps {label:16s} global {float(-10 * torch.log10(mse.mean())):6.2f}  mean "
                  f"{float(psnr.mean()):6.2f}  worst " + ", ".join(f"{int(i)} ({float(psnr[i]):.1f})"
                                                                 for i in order[:3]), flush=True)


main()
