"""End-to-end probe (issue 13): which static input quantizers clip on the sampling runs that drift.

Calibrates a method as ``ditq bench quality`` does (100 steps x 16 samples, calibration seed SEED), samples IMAGES
images at STEPS steps on the FP reference's noise with the fake-quant model, and records at every quantized
Linear, per image (its CFG pair pooled) and step, the share of the quantizer's inputs beyond its range and the
largest ``|x| / (127 * scale)``. Prints the drifting images (lowest PSNR) against the median image, site by site.
Usage: python scripts/probes/drift_clip.py MODEL STEPS IMAGES SEED [METHOD]
"""

import sys
from collections import defaultdict

import torch
from _common import cached_recipe, psnr_row

from ditq.core.qlinear import QLinear
from ditq.models.loading import load_model
from ditq.runtime.backends.fake_quant import group_denoiser
from ditq.testbed.scoring import SamplingSpec, fp_reference, run_sampler


def main() -> None:
    src, steps, images, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    entry = sys.argv[5] if len(sys.argv) > 5 else "htg"
    torch.set_num_threads(1)
    model = load_model(src)
    spec = SamplingSpec(steps=steps, cfg_scale=3.0, seed=0)
    labels = torch.arange(images) % model.num_conditions
    ref = fp_reference(model, labels, spec)
    recipe = cached_recipe(model, src, entry, seed)
    dens = [group_denoiser(model, recipe, g.group_id) for g in recipe.groups]
    # stats[(group, linear)] -> per call: (clipped share [B], max ratio [B])
    stats: dict[tuple[int, str], list[tuple[torch.Tensor, torch.Tensor]]] = defaultdict(list)
    for g, den in enumerate(dens):
        for lin, mod in den.named_modules():
            if isinstance(mod, QLinear) and mod.act_scale is not None:
                def hook(m: QLinear, inp: tuple[torch.Tensor], g: int = g, lin: str = lin) -> None:
                    x = m.quantizer_io(inp[0])[0]
                    r = (x.abs() / (m.act_scale * 127)).flatten(1)
                    stats[(g, lin)].append(((r > 1.0039).float().mean(1), r.amax(1)))  # beyond 127.5 / 127
                mod.register_forward_pre_hook(hook)

    def denoise(x: torch.Tensor, t: torch.Tensor, y: dict) -> torch.Tensor:
        return dens[recipe.group_of(float(t[0]))].predict(x, t, y)

    with torch.no_grad():
        out = run_sampler(model, denoise, labels, spec)
    psnr = psnr_row(f"{entry} seed {seed}", out, ref)
    order = torch.argsort(psnr)
    median = int(order[len(order) // 2])
    rows = []
    for (g, lin), calls in stats.items():
        share = torch.stack([c[0] for c in calls])  # [calls, 2B]: cond rows then uncond rows
        ratio = torch.stack([c[1] for c in calls])
        b = share.shape[1] // 2
        per_img_share = (share[:, :b] + share[:, b:]) / 2  # [calls, B]
        per_img_ratio = torch.maximum(ratio[:, :b], ratio[:, b:])
        rows.append((g, lin, per_img_share.mean(0), per_img_ratio.amax(0)))
    worst = [int(i) for i in order[:3]]
    print(f"share of clipped inputs x1e6 (mean over calls) and max |x|/range; images {worst} vs median {median}")
    rows.sort(key=lambda r: -float(r[2][worst[0]]))
    for g, lin, share, ratio in rows[:25]:
        print(f"g{g} {lin:40s} " + "  ".join(f"{float(share[i]) * 1e6:8.1f}/{float(ratio[i]):5.2f}"
                                             for i in [*worst, median])
              + f"   all-images mean {float(share.mean()) * 1e6:8.1f}")


main()
