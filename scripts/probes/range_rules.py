"""End-to-end probe (issue 13): a "coherent" rule choosing HTG's rotated ranges per site and group, against the
reservoir and exact ranges.

The rule decides per (rotated static site, timestep group) between the reservoir amax and the exact amax. Over the
group's n rotated input elements on the calibration loop, the reservoir scale s_r clips with a squared error C;
the exact scale s_e clips nothing but rounds coarser, n (s_e^2 - s_r^2) / 12 more (uniform rounding). Rounding
errors are independent from step to step and add up in power over the k steps a group serves; a clipping error
keeps its sign (the same large values of the same tokens) and adds up in amplitude, k times more. The rule takes
the exact scale where k C > n (s_e^2 - s_r^2) / 12.

Calibrates the default (reservoir) and ``rotation_ranges="exact"`` as ``ditq bench quality`` does (100 x 16,
calibration seed SEED; cached under /tmp/ditq_drift), which share every tensor but the activation scales, reruns
the calibration loop to measure C, n and k, and samples IMAGES images at every step count of STEPS on the FP
reference's noise: reservoir, exact but group 0, the rule, and the rule with group 0 on the reservoir.
Usage: python scripts/probes/range_rules.py MODEL STEPS IMAGES SEED
"""

import sys

import numpy as np
import torch
from _common import exact_in, psnr_row, range_pair, scale_group

from ditq.bench.quality_grid.seeds import global_psnr
from ditq.calibration.calibrate import CalibConfig, sampler_forward_loop
from ditq.calibration.stats import call_timestep
from ditq.core.quantizers import rotate
from ditq.models.loading import load_model
from ditq.runtime.backends.fake_quant import fake_quant_backend
from ditq.testbed.scoring import SamplingSpec, fp_reference, run_sampler


def coherent_scales(model, res, exact, seed: int) -> dict[str, torch.Tensor]:
    """The rule's choice of ``res`` (reservoir) or ``exact`` scale for every rotated static site and group, from
    one more run of the calibration loop (calibration seed ``seed``)."""
    sites = [s for s in res.sites if res.site_is_static(s) and res.linear_spec(s.linears[0]).rotation]
    clipped = {(s.name, g): 0.0 for s in sites for g in range(res.num_groups)}
    count = dict.fromkeys(clipped, 0)
    steps: list[set[int]] = [set() for _ in range(res.num_groups)]
    now: dict[str, int] = {}
    modules = dict(model.transformer.named_modules())

    def hook(site, block: int):
        def run(_m, inputs) -> None:
            g = res.group_of(now["t"])
            x = inputs[0].detach().float().reshape(-1, inputs[0].shape[-1])
            y = rotate((x - res.shift(site.name, g)) / res.smooth(site.name), block).abs()
            clipped[site.name, g] += float((y - 127 * res.act_scale(site.name, g)).clamp(min=0).square().sum())
            count[site.name, g] += y.numel()
            steps[g].add(now["t"])
        return run

    hooks = [model.transformer.register_forward_pre_hook(
        lambda _m, a, k: now.__setitem__("t", call_timestep(a, k)), with_kwargs=True)]
    hooks += [modules[s.linears[0]].register_forward_pre_hook(hook(s, res.linear_spec(s.linears[0]).rotation))
              for s in sites]
    try:
        with torch.no_grad():
            sampler_forward_loop(model, CalibConfig(seed=seed, progress=False))(model.transformer)
    finally:
        for h in hooks:
            h.remove()
    out = {}
    for (name, g), c in clipped.items():
        s_r, s_e = float(res.act_scale(name, g)), float(exact.act_scale(name, g))
        take = len(steps[g]) * c > count[name, g] * (s_e**2 - s_r**2) / 12
        out[f"g{g}/{name}.act_scale"] = (exact if take else res).tensors[f"g{g}/{name}.act_scale"]
    return out


def main() -> None:
    src, steps, images, seed = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    torch.set_num_threads(1)
    model = load_model(src)
    labels = torch.arange(images) % model.num_conditions
    res, exact = range_pair(model, src, seed)
    n = res.num_groups
    rule = coherent_scales(model, res, exact, seed)
    took = [sum(1 for k, v in rule.items() if scale_group(k) == g and not torch.equal(v, res.tensors[k]))
            for g in range(n)]
    print(f"{src} seed {seed}: groups " + " ".join(f"g{g.group_id}={list(g.interval)}" for g in res.groups)
          + f"; the rule takes the exact range at {took} of {len(rule) // n} rotated sites per group", flush=True)
    base = res.tensors
    variants = {
        "reservoir": base,
        "exact but g0": exact_in(base, exact, range(1, n)),
        "coherent": {**base, **rule},
        "coherent but g0": {**base, **{k: v for k, v in rule.items() if scale_group(k) > 0}},
    }
    for s in (int(v) for v in steps.split(",")):
        spec = SamplingSpec(steps=s, cfg_scale=3.0, seed=0)
        ref = fp_reference(model, labels, spec)
        psnr = {}
        for label, tensors in variants.items():
            res.tensors = tensors
            psnr[label] = psnr_row(f"{s:4d} steps {label}", run_sampler(model, fake_quant_backend(model, res),
                                                                        labels, spec), ref).numpy()
        for label in ("exact but g0", "coherent", "coherent but g0"):
            d_global = global_psnr(psnr[label]) - global_psnr(psnr["reservoir"])
            print(f"{s:4d} steps {label} - reservoir: global {d_global:+.2f}  mean "
                  f"{float(np.mean(psnr[label] - psnr['reservoir'])):+.2f}", flush=True)
    res.tensors = base


main()
