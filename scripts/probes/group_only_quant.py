"""End-to-end probe (issue 13): which timestep group's quantization costs the final image? Samples with one group
quantized and the others in FP (fake-quant backend), final-image PSNR global / mean vs FP, step SQNR.
Usage: python scripts/probes/group_only_quant.py MODEL STEPS IMAGES METHOD [CALIB_SEED]
"""

import json
import sys

import torch

from ditq.bench.quality import evaluate
from ditq.bench.quality_grid.config import parse_method
from ditq.calibration.calibrate import CalibConfig, calibrate
from ditq.calibration.methods import method_config
from ditq.models.loading import load_model
from ditq.runtime.backends.base import GroupedBackend
from ditq.runtime.backends.fake_quant import group_denoiser
from ditq.testbed.scoring import SamplingSpec, fp_reference

torch.set_num_threads(1)
src, steps, images, entry = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
seed = int(sys.argv[5]) if len(sys.argv) > 5 else 1
model = load_model(src)
labels = torch.arange(images) % model.num_conditions
spec = SamplingSpec(steps=steps, cfg_scale=3.0, seed=0)
ref = fp_reference(model, labels, spec)
name, params = parse_method(entry)
recipe = calibrate(model, method_config(name, **params), CalibConfig(steps=25, samples=8, seed=seed, progress=False))
print("groups", [g.interval for g in recipe.groups], flush=True)
fp = torch.no_grad()(model.denoiser().predict)
qs = [torch.no_grad()(group_denoiser(model, recipe, g.group_id).predict) for g in recipe.groups]


def run(mask, label):
    fns = [q if m else fp for q, m in zip(qs, mask)]
    be = GroupedBackend(label, [g.interval for g in recipe.groups], fns, num_classes=model.num_classes)
    q = evaluate(model, be, ref, spec, None, sqnr_rows=8)
    mse = ((q["images"].clamp(-1, 1) - ref.images.clamp(-1, 1)) / 2).square().double().mean()
    print(
        json.dumps(
            {
                "label": label,
                "global": round(float(10 * torch.log10(1 / mse)), 2),
                "mean": round(float(q["psnr_db"]), 2),
                "sqnr": round(q["sqnr_mean_db"], 2),
            }
        ),
        flush=True,
    )


G = recipe.num_groups
run([True] * G, "all")
for g in range(G):
    run([i == g for i in range(G)], f"only g{g}")
