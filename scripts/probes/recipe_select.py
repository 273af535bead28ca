"""End-to-end probe (issue 13, thirteenth pass): does sampling the calibration's own noise rank whole recipes as
the evaluation does?

Given recipes that ``ditq bench quality`` calibrated with calibration seed SEED (its ``recipes/<row>-seed<SEED>``
directories, e.g. HTG's default and its variants), samples N images (DDPM STEPS steps, CFG 3) on the calibration
noise (noise seed SEED, conditions cycling as the calibration's) with each, and prints each one's PSNR global /
mean against FP on that noise. If the ranking follows the evaluation's, a calibration could build a few candidate
recipes and keep the one that samples closest to FP, as ``rotation_ranges="auto"`` does for two range modes.
Usage: python scripts/probes/recipe_select.py MODEL SEED RECIPE_DIR [RECIPE_DIR ...]  (STEPS=100, N=16 via env)
"""

import os
import sys
from pathlib import Path

import torch
from _common import psnr_row

from ditq.artifacts.recipe import Recipe
from ditq.models.loading import load_model
from ditq.runtime.backends.fake_quant import fake_quant_backend
from ditq.testbed.scoring import SamplingSpec, fp_reference, run_sampler


def main() -> None:
    src, seed, dirs = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    steps, n = int(os.environ.get("STEPS", 100)), int(os.environ.get("N", 16))
    torch.set_num_threads(1)
    model = load_model(src)
    labels = torch.arange(n) % model.num_conditions
    spec = SamplingSpec(steps=steps, cfg_scale=3.0, seed=seed)
    ref = fp_reference(model, labels, spec)
    for d in dirs:
        recipe = Recipe.load(Path(d))
        psnr_row(Path(d).parent.parent.name, run_sampler(model, fake_quant_backend(model, recipe), labels, spec), ref)


main()
