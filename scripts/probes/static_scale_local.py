"""Local probe (issue 13): which static refinements of the fc1 / to_q / fc2 input quantizer pay, against dynamic
per-token quantization: more groups (1/3/8), alpha 0.5 vs 0.8, per-group smoothing, a static per-token-position
scale, separate scales for the CFG halves. Output SQNR of each Linear (weights in float), summed over blocks.
Usage: python scripts/probes/static_scale_local.py MODEL STEPS (STEPS >= 8: up to 8 groups)
"""

import math
import sys

import torch
from _common import block_taps
from _common import fake_int8 as q

src = sys.argv[1]
steps = int(sys.argv[2])
model, rec = block_taps(
    src,
    steps,
    {
        "fc1": (lambda b: b.ff.net[0].proj, "input"),
        "q": (lambda b: b.attn1.to_q, "input"),
        "fc2": (lambda b: b.ff.net[2], "input"),
    },
)
blocks = model.transformer.transformer_blocks
T = len(rec[0]["fc1"])


def best_q(x, W, f_grid=(1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4)):
    amax = x.abs().amax()
    return min(float(((q(x, amax * f) - x) @ W.T).pow(2).sum()) for f in f_grid)


def smooth(a, W, alpha):
    w = W.abs().amax(0).clamp_min(1e-5)
    return (a.clamp_min(1e-5) ** alpha / w ** (1 - alpha)).clamp_min(1e-5)


for kind in ("fc1", "q", "fc2"):
    tot = {}

    def add(k, e, s, tot=tot):
        tot.setdefault(k, [0.0, 0.0])
        tot[k][0] += e
        tot[k][1] += s

    for i, b in enumerate(blocks):
        lin = {"fc1": b.ff.net[0].proj, "q": b.attn1.to_q, "fc2": b.ff.net[2]}[kind]
        W = lin.weight.detach()
        C = W.shape[1]
        for G in (1, 3, 8):
            groups = [list(range(T))[g * T // G : (g + 1) * T // G] for g in range(G)]
            # shared smoothing from global shifted range (as HTG)
            Xs = [torch.stack([rec[i][kind][t] for t in g]) for g in groups]
            zs = [((X.reshape(-1, C).amax(0) + X.reshape(-1, C).amin(0)) / 2) for X in Xs]
            a = torch.stack([(X - z).reshape(-1, C).abs().amax(0) for X, z in zip(Xs, zs)]).amax(0)
            for alpha in (0.5, 0.8):
                s = smooth(a, W, alpha)
                for X, z in zip(Xs, zs):
                    sig = float((X @ W.T).pow(2).sum())
                    R = (X - z) / s
                    add(f"G{G} a{alpha} shared", best_q(R.reshape(-1, C), W * s), sig)
                    if G == 3:
                        sg = smooth((X - z).reshape(-1, C).abs().amax(0), W, alpha)
                        Rg = (X - z) / sg
                        add(f"G{G} a{alpha} pergroup-s", best_q(Rg.reshape(-1, C), W * sg), sig)
                        # static per-position scale (token index), from the group's mean per-token amax
                        p = R.abs().amax(-1).mean((0, 1)).clamp_min(1e-6)[None, None, :, None]  # [1,1,N,1]
                        Rp = R / p
                        amax = Rp.abs().amax()
                        e = min(
                            float((((q(Rp, amax * f) * p) - R).reshape(-1, C) @ (W * s).T).pow(2).sum())
                            for f in (1, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4)
                        )
                        add(f"G{G} a{alpha} pos-scale", e, sig)
                        # per-row-kind (uncond/cond halves)
                        B = R.shape[1]
                        e = 0.0
                        for half in (slice(0, B // 2), slice(B // 2, B)):
                            e += best_q(R[:, half].reshape(-1, C), W * s)
                        add(f"G{G} a{alpha} cond-split", e, sig)
                        Rf = R.reshape(-1, C)
                        amx = Rf.abs().amax(1, keepdim=True)
                        add(f"G{G} a{alpha} dyn-token", float(((q(Rf, amx) - Rf) @ (W * s).T).pow(2).sum()), sig)
    for k, (e, s_) in tot.items():
        print(f"{kind:4s} {k:24s} SQNR {10 * math.log10(s_ / e):6.2f} dB")
