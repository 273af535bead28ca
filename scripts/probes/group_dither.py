"""End-to-end probe (issue 13): does a per-group subtractive dither on timestep-invariant inputs pay?

The caption key/value input of a PixArt block (``attn2.kv``) is the same at every step of a prompt's trajectory, so
its static rounding error is the same at every step too, and builds up coherently over the trajectory (leaving
that one site in float buys the tiny PixArt +4.7 dB, at +0.2 dB of step SQNR; ``fp_fallback.py``). Each group's
shift is free (folded into the bias), so each group can round the same input differently: ``z_g += s * step_g * u_g``
with ``u_g`` uniform in [-1/2, 1/2) per channel, the scale widened by 128/127 so nothing new clips. The errors of
different groups are then independent and add in power instead of amplitude.

Loads a saved recipe (e.g. ``ditq bench quality``'s, 100 x 16) and samples IMAGES images at STEPS steps on the FP
reference's noise: as saved; dithered per group; the same dither in every group (control: no decorrelation).
Usage: python scripts/probes/group_dither.py MODEL STEPS IMAGES RECIPE [SUFFIX=attn2.kv] [SEEDS=0 (comma-separated)]
"""

import sys

import torch
from _common import psnr_row

from ditq.artifacts.recipe import Recipe
from ditq.models.loading import load_model
from ditq.runtime.backends.fake_quant import fake_quant_backend
from ditq.testbed.scoring import SamplingSpec, fp_reference, run_sampler

src, steps, images, path = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
suffix = sys.argv[5] if len(sys.argv) > 5 else "attn2.kv"
seeds = [int(v) for v in sys.argv[6].split(",")] if len(sys.argv) > 6 else [0]
torch.set_num_threads(1)
model = load_model(src)
spec = SamplingSpec(steps=steps, cfg_scale=3.0, seed=0)
ref = fp_reference(model, torch.arange(images) % model.num_conditions, spec)
recipe = Recipe.load(path)
base = dict(recipe.tensors)
sites = [s for s in recipe.sites if s.name.endswith(suffix)]
rotated = [lin for s in sites for lin in s.linears if recipe.linear_spec(lin).rotation]
assert not rotated, f"rotated sites {rotated}: this probe dithers unrotated inputs only"
print(f"{path}: dithering {len(sites)} site(s) *{suffix}, groups {[g.interval for g in recipe.groups]}", flush=True)


def run(label: str, same: bool, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    tensors = dict(base)
    for site in sites:
        smooth = base[f"{site.name}.smooth"]
        shared = torch.rand(smooth.numel(), generator=gen) - 0.5
        for g in recipe.groups:
            key = f"g{g.group_id}/{site.name}"
            scale = base[f"{key}.act_scale"] * 128 / 127
            u = shared if same else torch.rand(smooth.numel(), generator=gen) - 0.5
            tensors[f"{key}.act_scale"] = scale
            tensors[f"{key}.shift"] = base[f"{key}.shift"] + smooth * scale * u
    recipe.tensors = tensors
    psnr_row(label, run_sampler(model, fake_quant_backend(model, recipe), ref.labels, spec), ref)


recipe.tensors = base
psnr_row("as saved", run_sampler(model, fake_quant_backend(model, recipe), ref.labels, spec), ref)
for seed in seeds:
    run(f"dither per group, {seed}", same=False, seed=seed)
    run(f"same dither, all, {seed}", same=True, seed=seed)
