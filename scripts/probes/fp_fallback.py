"""End-to-end probe (issue 13): what leaving a few quantized Linears in floating point buys a static recipe, and at
what share of the GEMM work. Samples with chosen (site kind, timestep group) pairs unquantized (the group's folded
float Linear, fake-quant backend for the rest) and prints final-image PSNR global / mean vs FP, step SQNR, and the
share of the sampler's quantized multiply-adds left in FP. Model Optimizer SmoothQuant alpha 0.8 runs the same
kinds disabled (every step: it has no groups), so the comparison stays like for like.
Usage: python scripts/probes/fp_fallback.py MODEL STEPS IMAGES METHOD [CALIB_SEED] [--no-peer] [--only=SETS]
                                            [--recipe=DIR]
SETS: ``;``-separated sets of ``kind@group`` pairs joined by ``,`` (kind qkv | out | fc1 | fc2, and on PixArt the
cross-attention's cq | ckv | cout: its query, caption key/value and output projections; group an index, or ``*``
for every group), e.g. ``--only='qkv@*,out@*;fc1@2'``; the default is a fixed list of MLP sets. ``--recipe=DIR``: a
saved recipe of MODEL (e.g. one of ``ditq bench quality``'s, calibrated 100 x 16) instead of calibrating METHOD
25 x 8.
"""

import copy
import json
import sys

import torch
from _common import calibrated_reference, end_to_end_row

from ditq.bench.quality_grid.peers import modelopt_config
from ditq.core.sampler import make_scheduler
from ditq.models.loading import make_denoiser, quant_sites
from ditq.runtime.backends.base import GroupedBackend
from ditq.runtime.backends.fake_quant import group_denoiser
from ditq.testbed.scoring import SamplingSpec, run_sampler

torch.set_num_threads(1)
args = [a for a in sys.argv[1:] if not a.startswith("--")]
peer = "--no-peer" not in sys.argv
only = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--only=")), None)
saved = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--recipe=")), None)
src, steps, images, entry = args[0], int(args[1]), int(args[2]), args[3]
seed = int(args[4]) if len(args) > 4 else 1
if saved is None:
    model, spec, ref, recipe = calibrated_reference(src, steps, images, entry, seed)
else:
    from ditq.artifacts.recipe import Recipe
    from ditq.models.loading import load_model
    from ditq.testbed.scoring import fp_reference

    model, spec = load_model(src), SamplingSpec(steps=steps, cfg_scale=3.0, seed=0)
    ref = fp_reference(model, torch.arange(images) % model.num_conditions, spec)
    recipe = Recipe.load(saved)
G = recipe.num_groups
print("groups", [g.interval for g in recipe.groups], flush=True)

sites = quant_sites(model.transformer)
KINDS = {"qkv": "attn1.qkv", "out": "attn1.to_out.0", "fc1": "ff.net.0.proj", "fc2": "ff.net.2",
         "cq": "attn2.to_q", "ckv": "attn2.kv", "cout": "attn2.to_out.0"}
modules = dict(model.transformer.named_modules())
macs = {lin: modules[lin].weight.numel() for s in sites for lin in s.linears}  # per token; every Linear sees them all
# the sampler's steps per group: the share of the work each group's graph does
sched = make_scheduler(model.scheduler_config)
sched.set_timesteps(steps)
served = [sum(g.interval[0] <= int(t) <= g.interval[1] for t in sched.timesteps) for g in recipe.groups]
print("steps per group", served, flush=True)


def kind_of(site):
    return next(k for k, suffix in KINDS.items() if site.name.endswith(suffix))


quant = [group_denoiser(model, recipe, g) for g in range(G)]
floats = [group_denoiser(model, recipe, g, quantize=False) for g in range(G)]


def mixed(fp: set[tuple[str, int]]):
    """Per-group denoisers with the Linears of the (kind, group) pairs in ``fp`` taken from the float copy."""
    fns = []
    for g in range(G):
        den = copy.deepcopy(quant[g])
        mods = dict(den.named_modules())
        fmods = dict(floats[g].named_modules())
        for site in sites:
            if (kind_of(site), g) in fp:
                for lin in site.linears:
                    key = next(k for k in mods if k.endswith(lin))
                    parent, _, attr = key.rpartition(".")
                    setattr(mods[parent], attr, fmods[key])
        fns.append(torch.no_grad()(den.predict))
    return fns


def share(fp: set[tuple[str, int]]) -> float:
    total = sum(macs.values()) * sum(served)
    kept = sum(macs[lin] * served[g] for s in sites for g in range(G) if (kind_of(s), g) in fp for lin in s.linears)
    return kept / total


def report(label, denoise, fp_share):
    print(json.dumps(end_to_end_row(label, model, denoise, spec, ref, fp_share=round(fp_share, 3))), flush=True)


hi = G - 1
configs = {
    "all quantized": set(),
    "fc1 FP, high-t group": {("fc1", hi)},
    "fc1+fc2 FP, high-t group": {("fc1", hi), ("fc2", hi)},
    "fc1 FP, every group": {("fc1", g) for g in range(G)},
    "fc1 FP, two highest groups": {("fc1", g) for g in range(max(0, G - 2), G)},
    "fc1+fc2 FP, every group": {(k, g) for k in ("fc1", "fc2") for g in range(G)},
}
if only is not None:
    configs = {"all quantized": set()}
    for text in only.split(";"):
        pairs = [p.split("@") for p in text.split(",")]
        configs[f"{text} FP"] = {(k, g) for k, gs in pairs for g in (range(G) if gs == "*" else [int(gs)])}
for label, fp in configs.items():
    be = GroupedBackend(label, [g.interval for g in recipe.groups], mixed(fp),
                        num_classes=model.num_classes if model.kind == "dit" else None)
    report(f"{entry}: {label}", be, share(fp))

if peer:
    import modelopt.torch.quantization as mtq

    peer_sets = {"all quantized": (), "fc1 FP": ("fc1",), "fc1+fc2 FP": ("fc1", "fc2")}
    if only is not None:  # the sets that hold for every group
        peer_sets = {"all quantized": ()} | {label: tuple(sorted({k for k, _ in fp})) for label, fp in configs.items()
                                             if fp and fp == {(k, g) for k, _ in fp for g in range(G)}}
    for label, off in peer_sets.items():
        linears = [lin for s in sites if kind_of(s) not in off for lin in s.linears]
        den = copy.deepcopy(make_denoiser(model.transformer))

        def loop(m):
            run_sampler(model, m, torch.arange(8) % model.num_conditions, SamplingSpec(steps=25, cfg_scale=3.0,
                                                                                       seed=seed))

        with torch.no_grad():
            den = mtq.quantize(den, modelopt_config(linears, "int8-smoothquant-a08"), loop)
        fp = {(k, g) for k in off for g in range(G)}
        report(f"modelopt sq a0.8: {label}", den, share(fp))
