"""End-to-end probe (issue 13): is the static quantizers' rounding error correlated along the trajectory, and does
a subtractive dither that changes at every step pay?

Between two sampler steps a layer's input moves by much less than one INT8 step, so a static quantizer rounds it
almost the same way at consecutive steps and its error is coherent along the trajectory (the extreme case, an input
that does not move at all, is PixArt's caption K/V, ``group_dither.py``). A dither ``d_t`` (uniform over one step,
per input channel) added before the quantizer and removed after the GEMM (``Q(x + d_t) W - d_t W``: a per-step bias)
makes the rounding error independent of the input and of the other steps. Deployable as constants: a table of
dither rows and of their ``d W`` bias rows, one per step, gathered by the timestep.

Loads a saved recipe and samples IMAGES images at STEPS steps on the FP reference's noise:
as saved; subtractive per-channel dither drawn anew at every call; the same dither at every call (control).
Usage: python scripts/probes/step_dither.py MODEL STEPS IMAGES RECIPE [SEEDS=0 (comma-separated)] [WIDEN=1]
"""

import sys

import torch
from _common import psnr_row

from ditq.artifacts.recipe import Recipe
from ditq.core import qlinear
from ditq.core.quantizers import fake_quant, rotate
from ditq.models.loading import load_model
from ditq.runtime.backends.fake_quant import fake_quant_backend
from ditq.testbed.scoring import SamplingSpec, fp_reference, run_sampler

src, steps, images, path = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
seeds = [int(v) for v in sys.argv[5].split(",")] if len(sys.argv) > 5 else [0]
widen = float(sys.argv[6]) if len(sys.argv) > 6 else 1.0
torch.set_num_threads(1)
model = load_model(src)
spec = SamplingSpec(steps=steps, cfg_scale=3.0, seed=0)
ref = fp_reference(model, torch.arange(images) % model.num_conditions, spec)
recipe = Recipe.load(path)
original = qlinear.QLinear.quantizer_io
state: dict = {"mode": "off", "gen": None, "fixed": {}}


def quantizer_io(self: qlinear.QLinear, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if state["mode"] == "off" or self.act_scale is None:
        return original(self, x)
    if self.pre is not None:
        x = (x - self.pre[0]) * self.pre[1]
    x = rotate(x, self.rotation)
    scale = self.act_scale * widen
    if state["mode"] == "fixed":
        d = state["fixed"].setdefault(id(self), (torch.rand(x.shape[-1], generator=state["gen"]) - 0.5) * scale)
    elif state["mode"] == "element":
        d = (torch.rand(x.shape, generator=state["gen"]) - 0.5) * scale
    else:
        d = (torch.rand(x.shape[-1], generator=state["gen"]) - 0.5) * scale
    return x, fake_quant(x + d, scale, self.a_bits, self.fmt) - d


qlinear.QLinear.quantizer_io = quantizer_io  # type: ignore[method-assign]
backend = fake_quant_backend(model, recipe)
print(f"{path}: groups {[g.interval for g in recipe.groups]}, widen {widen}", flush=True)
psnr_row("as saved", run_sampler(model, backend, ref.labels, spec), ref)
for seed in seeds:
    for mode in ("step", "fixed", "element"):
        state.update(mode=mode, gen=torch.Generator().manual_seed(seed), fixed={})
        psnr_row(f"{mode} dither, {seed}", run_sampler(model, backend, ref.labels, spec), ref)
