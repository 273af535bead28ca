"""Where HTG stands now: one table of paired PSNR differences, built from the saved `ditq bench quality` grids.

    python scripts/standing.py docs/bench_quality/standing.json > docs/bench_quality/standing.md

The spec (JSON) names, for each model, bit width and step count, the grid and row that hold HTG at the current
defaults, and the grid and row of every comparison. Grids run at different times pair only when they share the
evaluation noise (same model, steps, --eval-samples and seed); the script checks the image count and refuses
otherwise. Each cell is HTG minus the other row, paired over images and over the calibration seeds both rows have:
global PSNR (pooled MSE per seed, then averaged) with its 95 % bootstrap interval over images, then mean PSNR.
The spec's paths are relative to the spec's own folder.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from paired_psnr import common_seeds, delta_global, delta_mean, rows

from ditq.bench.quality_grid.seeds import bootstrap_ci, global_psnr


def _row(root: Path, ref: list[str], bits: str, steps: int) -> dict[int, np.ndarray]:
    """calibration seed -> per-image PSNR of row ``ref[1]`` in grid ``ref[0]`` at ``bits`` and ``steps``."""
    by_steps = rows(str(root / ref[0]), ref[1], bits)
    if steps not in by_steps:
        raise SystemExit(f"{ref[0]}: no {ref[1]!r} row at {bits}, {steps} steps")
    return by_steps[steps]


def _cell(a: dict[int, np.ndarray], b: dict[int, np.ndarray]) -> str:
    seeds, x, y = common_seeds(a, b)
    pair = np.stack([x, y])  # [2, seeds, images]: the bootstrap resamples images, the same ones on both sides
    g, m = delta_global(pair), delta_mean(pair)
    lo, hi = bootstrap_ci(pair, delta_global)
    note = "" if len(seeds) == len(a) else f" (seeds {','.join(map(str, seeds))})"
    return f"{g:+.2f} [{lo:+.2f}, {hi:+.2f}] / {m:+.2f}{note}"


def _htg(a: dict[int, np.ndarray]) -> str:
    per_seed = [global_psnr(a[s]) for s in sorted(a)]
    mean = float(np.mean([a[s].mean() for s in a]))
    return f"{np.mean(per_seed):.2f} ({min(per_seed):.2f}–{max(per_seed):.2f}) / {mean:.2f}"


def table(spec: dict, root: Path) -> str:
    out = [f"# {spec['title']}", "", spec["intro"], ""] if "title" in spec else []
    for section in spec["sections"]:
        cols = section["versus"]
        out += [f"### {section['title']}", "",
                "| model | steps | HTG, PSNR global (seeds) / mean | " + " | ".join(f"− {c}" for c in cols) + " |",
                "|---|---|---|" + "---|" * len(cols)]
        for r in section["rows"]:
            bits, steps = r["bits"], r["steps"]
            htg = _row(root, r["htg"], bits, steps)
            cells = []
            for c in cols:
                ref = r.get("versus", {}).get(c)
                cells.append("–" if ref is None else _cell(htg, _row(root, ref, bits, steps)))
            out.append(f"| {r['model']} | {steps} | {_htg(htg)} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("spec")
    args = p.parse_args()
    spec_path = Path(args.spec)
    print(table(json.loads(spec_path.read_text()), spec_path.parent))


if __name__ == "__main__":
    main()
