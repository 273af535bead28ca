"""How a plain block-Hadamard concentrates a folded input's common offset, and what random channel signs change.

    python scripts/probes/rotation_coherence.py MODEL [SEED] [--block 64]

Calibrates HTG on MODEL (25 x 8, seed SEED, the global criterion; ``_common.htg_solution``) and, for every site and
timestep group, rotates the group's folded reservoir rows ``(x - z_g) / s`` with a block-Hadamard ``H`` two ways:
plain (``x H``: the first column of each block is all ones, so coordinate 0 of a block is sqrt(block) times the
block's channel mean) and with random signs (``(x * d) H``, ``d`` = +-1 per channel). Per site it prints, averaged
over groups: the rotated amax (what a static scale must cover) both ways, and, for the plain rotation, how much
larger the amax of each block's coordinate 0 is than the median coordinate's.
"""

from __future__ import annotations

import argparse

from _common import htg_solution

from ditq.calibration.methods.base import folded_group_inputs
from ditq.core.quantizers import largest_pow2_divisor, rotate, rotation_signs


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("seed", type=int, nargs="?", default=1)
    p.add_argument("--block", type=int, default=64)
    args = p.parse_args()
    _, ctx, sol = htg_solution(args.model, args.seed, rotation=0)
    print(f"{'site':<44} {'amax plain':>10} {'amax signed':>11} {'signed/plain':>12} {'coord0/median':>13}")
    ratios = []
    for site in ctx.sites:
        rows = folded_group_inputs(ctx, site, sol.grouping, sol.shifts[site.name], sol.smooth[site.name])
        k = rows[0].shape[-1]
        block = min(args.block, largest_pow2_divisor(k))
        d = rotation_signs(k)  # HTG's default draw
        coord = [rotate(x, block).abs().amax(0).reshape(-1, block) for x in rows]  # plain: [blocks, block] per group
        plain = [float(c.amax()) for c in coord]
        signed = [float(rotate(x * d, block).abs().amax()) for x in rows]
        c0 = [float((c[:, 0] / c[:, 1:].median(1).values).median()) for c in coord]
        a, b = sum(plain) / len(plain), sum(signed) / len(signed)
        ratios.append(b / a)
        print(f"{site.name:<44} {a:>10.3f} {b:>11.3f} {b / a:>12.3f} {sum(c0) / len(c0):>13.2f}")
    print(f"median signed/plain amax over {len(ratios)} sites: {sorted(ratios)[len(ratios) // 2]:.3f}")


if __name__ == "__main__":
    main()
