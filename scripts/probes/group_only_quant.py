"""End-to-end probe (issue 13): which timestep group's quantization costs the final image? Samples with one group
quantized and the others in FP (fake-quant backend), final-image PSNR global / mean vs FP, step SQNR.
Usage: python scripts/probes/group_only_quant.py MODEL STEPS IMAGES METHOD [CALIB_SEED]
"""

import json
import sys

import torch
from _common import calibrated_reference, end_to_end_row

from ditq.runtime.backends.base import GroupedBackend
from ditq.runtime.backends.fake_quant import group_denoiser

torch.set_num_threads(1)
src, steps, images, entry = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
seed = int(sys.argv[5]) if len(sys.argv) > 5 else 1
model, spec, ref, recipe = calibrated_reference(src, steps, images, entry, seed)
print("groups", [g.interval for g in recipe.groups], flush=True)
fp = torch.no_grad()(model.denoiser().predict)
qs = [torch.no_grad()(group_denoiser(model, recipe, g.group_id).predict) for g in recipe.groups]


def run(mask, label):
    fns = [q if m else fp for q, m in zip(qs, mask)]
    be = GroupedBackend(label, [g.interval for g in recipe.groups], fns, num_classes=model.num_classes)
    print(json.dumps(end_to_end_row(label, model, be, spec, ref)), flush=True)


G = recipe.num_groups
run([True] * G, "all")
for g in range(G):
    run([i == g for i in range(G)], f"only g{g}")
