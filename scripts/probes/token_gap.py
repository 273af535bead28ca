"""Local probe: where the gap between one static INT8 scale and per-token scales comes from, after HTG's shift,
smoothing and randomized block-Hadamard.

    python scripts/probes/token_gap.py MODEL [STEPS] [GROUPS]

Over a DDPM run (8 classes, CFG 3, seed 0; STEPS default 25) split into GROUPS contiguous timestep groups (default
3), every block's fc1, to_q, fc2 and out-projection input is shifted, divided by a smoothing, multiplied by random
signs and rotated by the block-64 Hadamard (or left unrotated), then quantized to INT8 with its range measured
per group (one static scale: what TensorRT runs), per call (timestep), per CFG half, per sample, or per token (the
dynamic methods). Printed: the Linear's output SQNR (float weights) summed over blocks, and, for comparison, the
static-vs-per-token gap of i.i.d. Gaussian rows of the same width and count (no outliers at all).

Shifts: the group mid-range of each channel of x ("channel", HTG's shift before the rotated-shift change; also the
"unrotated" rows), or of each coordinate of the rotated input ("rotated", HTG's ``rotation_shift`` default).
Smoothings: SmoothQuant's ``a^alpha / w^(1 - alpha)`` at alpha 0.8 and 0.5 (a: the shifted channel amax). For the
adaLN inputs (fc1, to_q: ``x = LN(h) (1 + gamma) + beta``, every ``LN(h)`` row of the same norm), also
``mean |1 + gamma|`` ("modulation": the smoothing that would give every token the same norm if gamma did not vary
with the sample).
"""

from __future__ import annotations

import itertools
import math
import sys

import torch
from _common import block_taps
from _common import fake_int8 as q

from ditq.calibration.methods.htg import centring_shift
from ditq.calibration.methods.smoothquant import smoothing_scale
from ditq.core.quantizers import rotate, rotation_signs

BLOCK = 64
# the group mid-range of each channel of x, or of each coordinate of the rotated input; "unrotated": the channel
# shift without the rotation
SHIFTS = ("unrotated", "channel", "rotated")
MODES = ("static", "call", "cfg half", "sample", "token")  # where the range is measured: group, call, ..., token


def main() -> None:
    src = sys.argv[1]
    steps = int(sys.argv[2]) if len(sys.argv) > 2 else 25
    n_groups = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    taps = {
        "fc1": (lambda b: b.ff.net[0].proj, "input"),
        "q": (lambda b: b.attn1.to_q, "input"),
        "ln2": (lambda b: b.norm3, "output"),
        "ln1": (lambda b: b.norm1.norm, "output"),
        "emb": (lambda b: b.norm1.linear, "output"),
        "fc2": (lambda b: b.ff.net[2], "input"),
        "out": (lambda b: b.attn1.to_out[0], "input"),
    }
    model, rec = block_taps(src, steps, taps)
    blocks = model.transformer.transformer_blocks
    n_calls = len(rec[0]["fc1"])
    groups = [range(g * n_calls // n_groups, (g + 1) * n_calls // n_groups) for g in range(n_groups)]
    totals: dict[tuple[str, str], list[float]] = {}
    widths: dict[str, tuple[int, int]] = {}  # kind -> (channels, rows of one group)
    for i, blk in enumerate(blocks):
        sites = (("fc1", "ln2", (3, 4), blk.ff.net[0].proj), ("q", "ln1", (0, 1), blk.attn1.to_q),
                 ("fc2", None, None, blk.ff.net[2]), ("out", None, None, blk.attn1.to_out[0]))
        for kind, ln, chunks, lin in sites:
            w = lin.weight.detach().double()
            k = w.shape[1]
            xs = [t.double() for t in rec[i][kind]]  # [B, N, C] per call
            flat = torch.cat([x.reshape(-1, k) for x in xs])
            widths[kind] = (k, flat.shape[0] // n_groups)
            zs = []
            for g in groups:
                xg = torch.cat([xs[t].reshape(-1, k) for t in g])
                zs.append((xg.amax(0) + xg.amin(0)) / 2)
            a = torch.stack([(torch.cat([xs[t].reshape(-1, k) for t in g]) - z).abs().amax(0)
                             for g, z in zip(groups, zs)]).amax(0).clamp_min(1e-5)
            wmax = w.abs().amax(0)
            smoothings = {"alpha 0.8": smoothing_scale(a, wmax, 0.8), "alpha 0.5": smoothing_scale(a, wmax, 0.5)}
            if ln is not None:  # an adaLN input: x = LN(h) (1 + gamma) + beta
                sh, sc = chunks
                lns = [t.double() for t in rec[i][ln]]
                mods = [1 + e.double().chunk(6, dim=1)[sc] for e in rec[i]["emb"]]  # [B, C]
                betas = [e.double().chunk(6, dim=1)[sh] for e in rec[i]["emb"]]
                err = max(float((x - (l_ * m[:, None] + b[:, None])).abs().max())
                          for x, l_, m, b in zip(xs, lns, mods, betas))
                assert err < 1e-4, f"block {i} {kind}: x != LN(h) (1 + gamma) + beta (max error {err:.2e})"
                mod = torch.cat(mods).abs().mean(0).clamp_min(1e-5)
                smoothings["modulation"] = mod
            d = rotation_signs(k).double()
            sig = float((flat @ w.T).pow(2).sum())
            for (name, s), shift in itertools.product(smoothings.items(), SHIFTS):
                for mode in MODES:
                    e_tot = 0.0
                    for g, z in zip(groups, zs):
                        if shift == "rotated":  # centre every rotated coordinate (HTG's rotation_shift default)
                            z = centring_shift(torch.cat([xs[t].reshape(-1, k) for t in g]) / (s * d), s * d, BLOCK)
                        block, dd = (0, 1.0) if shift == "unrotated" else (BLOCK, d)
                        us = [rotate((xs[t] - z) / s * dd, block) for t in g]  # [B, N, C]
                        amax = max(float(u.abs().max()) for u in us)
                        for u in us:
                            r = {"static": lambda u, amax=amax: amax, "call": lambda u: u.abs().amax(),
                                 "cfg half": lambda u: torch.stack([h.abs().amax().expand(h.shape[0])
                                                                    for h in u.chunk(2)]).reshape(-1, 1, 1),
                                 "sample": lambda u: u.abs().amax((1, 2), keepdim=True),
                                 "token": lambda u: u.abs().amax(2, keepdim=True)}[mode](u)
                            r = r.clamp_min(1e-8) if isinstance(r, torch.Tensor) else r
                            e_x = rotate(q(u, r) - u, block) * dd * s  # the block Hadamard is symmetric: R^T = R
                            e_tot += float((e_x @ w.T).pow(2).sum())
                    t_ = totals.setdefault((kind, f"{name}, {shift} shift, {mode}"), [0.0, 0.0])
                    t_[0] += e_tot
                    t_[1] += sig
    print(f"{src}: {steps} DDPM steps, {n_groups} groups, {len(blocks)} blocks. Linear output SQNR (dB, float weights,")
    print("summed over blocks) with the INT8 input range measured per: " + ", ".join(MODES))
    print(f"{'site':<5} {'smoothing, shift':<30} " + " ".join(f"{m:>9}" for m in MODES) + f" {'token-static':>12}")
    for kind in dict.fromkeys(k for k, _ in totals):
        for name in dict.fromkeys(label.rsplit(", ", 1)[0] for k, label in totals if k == kind):
            row = [10 * math.log10(totals[kind, f"{name}, {m}"][1] / totals[kind, f"{name}, {m}"][0]) for m in MODES]
            print(f"{kind:<5} {name:<30} " + " ".join(f"{v:>9.2f}" for v in row) + f" {row[-1] - row[0]:>12.2f}")
        k, n = widths[kind]
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(n, k, generator=gen, dtype=torch.float64)
        gap = 10 * math.log10(float((q(x, x.abs().max()) - x).pow(2).sum())
                              / float((q(x, x.abs().amax(1, keepdim=True)) - x).pow(2).sum()))
        pad = 10 * len(MODES) - 1
        print(f"{kind:<5} {'iid Gaussian rows':<30} {'':>{pad}} {gap:>12.2f}   ({n} rows of {k}, one group)")


if __name__ == "__main__":
    main()
