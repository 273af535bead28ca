"""End-to-end probe (issue 13): does a static per-timestep correction of the quantized model's *output* help?

PTQD-style (Shang et al. 2023, "PTQD: accurate post-training quantization for diffusion models"): the quantization
error of the noise prediction, delta = q - f, splits into a part correlated with the FP output (delta ~ k_t f) and a
residual with a per-channel mean b_t. Both are fitted per sampler timestep on FP trajectories of a *fit* set (other
noise seed and labels than the evaluation images), teacher-forced, and removed at sampling: ``(q - b_t) / (1 + k_t)``.
A correction like that costs a few scalar ops per step in the sampler (TensorRT-neutral).

Prints PSNR global / mean vs FP and step SQNR for: no correction, gain only, bias only, both.
Usage: python scripts/probes/output_correction.py MODEL STEPS IMAGES [CALIB_SEED] [FIT_IMAGES]
"""

import json
import sys

import torch
from _common import calibrated_reference, end_to_end_row

from ditq.runtime.backends import fake_quant_backend
from ditq.testbed.scoring import SamplingSpec, fp_reference

torch.set_num_threads(1)
src, steps, images = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
seed = int(sys.argv[4]) if len(sys.argv) > 4 else 1
n_fit = int(sys.argv[5]) if len(sys.argv) > 5 else 16
model, spec, ref, recipe = calibrated_reference(src, steps, images, "htg", seed)
G = recipe.num_groups
quant = fake_quant_backend(model, recipe)

# fit set: other labels and noise than the evaluation images
fit = fp_reference(model, (torch.arange(n_fit) + 3) % model.num_conditions,
                   SamplingSpec(steps=steps, cfg_scale=spec.cfg_scale, seed=1000 + seed))
gain, bias = {}, {}
pairs_of: dict[int, list] = {g: [] for g in range(G)}  # per group: the (error, FP output) pair of each fit step
with torch.no_grad():
    for (x, t, y), f in zip(fit.inputs, fit.outputs):
        q = quant(x, t, y)
        d = q - f
        k = float((d * f).sum() / (f * f).sum())
        r = d - k * f
        dims = [i for i in range(r.dim()) if i != 1]  # per output channel
        gain[float(t[0])] = k
        bias[float(t[0])] = r.mean(dims, keepdim=True)[0]
        pairs_of[quant.group_of(float(t[0]))].append((d, f))
# per group (foldable into the output projection of each group's graph): one gain and one bias per channel
group_gain, group_bias = {}, {}
for g, pairs in pairs_of.items():
    ff = sum(float((f * f).sum()) for _, f in pairs)
    k = sum(float((d * f).sum()) for d, f in pairs) / ff if ff else 0.0
    group_gain[g] = k
    group_bias[g] = torch.stack([(d - k * f).mean([i for i in range(d.dim()) if i != 1]) for d, f in pairs]).mean(0)
ks = list(gain.values())
print(f"groups {[g.interval for g in recipe.groups]}; gain k_t: min {min(ks):+.2e} max {max(ks):+.2e}; "
      f"|bias| max {max(float(b.abs().max()) for b in bias.values()):.2e}", flush=True)


def corrected(use_gain: bool, use_bias: bool, per_group: bool = False):
    def fn(x, t, y):
        q = quant(x, t, y)
        key = float(t[0])
        g = quant.group_of(key)
        if use_bias:
            q = q - (group_bias[g].reshape(1, -1, *[1] * (q.dim() - 2)) if per_group else bias[key])
        if use_gain:
            q = q / (1 + (group_gain[g] if per_group else gain[key]))
        return q
    return fn


print(f"group gains {[f'{k:+.1e}' for k in group_gain.values()]}", flush=True)
for label, g_on, b_on, pg in [("none", False, False, False), ("gain", True, False, False),
                              ("bias", False, True, False), ("both", True, True, False),
                              ("both per group", True, True, True)]:
    print(json.dumps(end_to_end_row(f"htg@{seed} correction={label}", model, corrected(g_on, b_on, pg), spec,
                                    ref)), flush=True)
