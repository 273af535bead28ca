"""Paired PSNR difference of two `ditq bench quality` rows, possibly from two runs (quality.json files).

    python scripts/paired_psnr.py A/quality.json 'htg' B/quality.json 'modelopt int8-smoothquant-a08' --bits W8A8

Both runs must have used the same evaluation noise (the grid's FP images: same model, steps, --eval-samples). Per
step count: A minus B, global PSNR (pooled MSE) computed per calibration seed and then averaged over the seeds both
rows have, mean PSNR averaged over images and seeds; 95 % bootstrap interval over images (2000 resamples, seed 0).
`ditq bench quality` itself pairs HTG with the best peer inside one run (averaging each image over seeds first).
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from ditq.bench.quality_grid.seeds import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, global_psnr


def rows(path: str, method: str, bits: str) -> dict[int, dict[int, np.ndarray]]:
    """steps -> calibration seed -> per-image PSNR (dB) of ``method`` at ``bits`` in a quality.json."""
    data = json.load(open(path))
    out: dict[int, dict[int, np.ndarray]] = {}
    for cell in data["cells"] + data.get("peers", []):
        if cell["method"] == method and cell["bits"] == bits:
            out.setdefault(cell["steps"], {})[cell["calib_seed"]] = np.asarray(cell["psnr_per_image_db"])
    if not out:
        raise SystemExit(f"{path}: no {method!r} rows at {bits}")
    return out


def delta_global(p: np.ndarray) -> float:
    """A minus B [2, seeds, images]: the pooled-MSE PSNR of each seed, averaged over the seeds."""
    return float(np.mean([global_psnr(a) - global_psnr(b) for a, b in zip(p[0], p[1])]))


def delta_mean(p: np.ndarray) -> float:
    """A minus B [2, seeds, images]: the per-image PSNR averaged over images and seeds."""
    return float(p[0].mean() - p[1].mean())


def paired(a: np.ndarray, b: np.ndarray, rng: np.random.Generator) -> tuple[float, float, float, float, float, float]:
    """A minus B, both [seeds, images] on the same images: global, its 95 % interval, mean, its 95 % interval."""
    pair = np.stack([a, b])  # the bootstrap resamples images, the same ones on both sides
    n = pair.shape[-1]
    draws = [pair[..., rng.integers(0, n, n)] for _ in range(BOOTSTRAP_RESAMPLES)]
    boots = np.array([(delta_global(d), delta_mean(d)) for d in draws])
    lo, hi = np.percentile(boots, [2.5, 97.5], axis=0)
    return delta_global(pair), float(lo[0]), float(hi[0]), delta_mean(pair), float(lo[1]), float(hi[1])


def common_seeds(a_rows: dict[int, np.ndarray], b_rows: dict[int, np.ndarray]) -> tuple[list[int], np.ndarray,
                                                                                          np.ndarray]:
    """The calibration seeds both rows have (at one step count), and each row's [seeds, images] on them; refuses
    rows that were not scored on the same evaluation images."""
    seeds = sorted(set(a_rows) & set(b_rows))
    if not seeds:
        raise SystemExit("no calibration seed in common")
    a, b = np.stack([a_rows[s] for s in seeds]), np.stack([b_rows[s] for s in seeds])
    if a.shape != b.shape:
        raise SystemExit(f"{a.shape[1]} vs {b.shape[1]} images: not the same evaluation set")
    return seeds, a, b


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("file_a")
    p.add_argument("method_a")
    p.add_argument("file_b")
    p.add_argument("method_b")
    p.add_argument("--bits", default="W8A8")
    args = p.parse_args()
    a_rows, b_rows = rows(args.file_a, args.method_a, args.bits), rows(args.file_b, args.method_b, args.bits)
    rng = np.random.default_rng(BOOTSTRAP_SEED)  # one stream over the step counts
    for steps in sorted(set(a_rows) & set(b_rows), reverse=True):
        seeds, a, b = common_seeds(a_rows[steps], b_rows[steps])
        g, g_lo, g_hi, m, m_lo, m_hi = paired(a, b, rng)
        print(f"{steps} steps, seeds {seeds}: {args.method_a} - {args.method_b} ({args.bits}): "
              f"global {g:+.2f} [{g_lo:+.2f}, {g_hi:+.2f}], mean {m:+.2f} [{m_lo:+.2f}, {m_hi:+.2f}]")


if __name__ == "__main__":
    main()
