"""Peak memory and time of HTG's Fisher criterion on a full-size architecture (random weights), with and without
gradient checkpointing in its backward passes (docs/fullsize/fullsize.md).

Calibrates HTG's statistics on one DDPM step x one sample (CFG batch 2), then runs the Fisher criterion's passes over
every site on one probe of ROWS batch rows: two candidates per site (mid-range shift, no smoothing and alpha 0.5,
rotated where HTG would rotate), or with --all-candidates every one HTG scores (for timing). The resident high-water
mark (VmHWM) is reset before the criterion, so the peak is the criterion's own. With --limit-gb the process's
address space is capped there: an allocation beyond it fails in Python instead of waking the kernel's OOM killer.
Usage: python scripts/probes/fisher_memory.py [MODEL] [--rows N] [--no-checkpoint] [--limit-gb G] [--threads T]
       [--all-candidates]
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from typing import Any

import torch


class Captured(Exception):
    pass


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model", nargs="?", default="pixart-alpha-1024")
    ap.add_argument("--rows", type=int, default=1)
    ap.add_argument("--no-checkpoint", action="store_true")
    ap.add_argument("--limit-gb", type=float, default=0.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--all-candidates", action="store_true", help="every candidate of every site, as HTG scores")
    args = ap.parse_args()
    if args.limit_gb:
        cap = int(args.limit_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    torch.set_num_threads(args.threads)

    from ditq.bench.fullsize import _reset_peak, _rss_peak_bytes
    from ditq.calibration.calibrate import CalibConfig, calibrate
    from ditq.calibration.groups import SiteRange, group_timesteps
    from ditq.calibration.methods import htg
    from ditq.calibration.methods.base import site_rotations
    from ditq.calibration.methods.site_probe import FisherScorer, image_tokens
    from ditq.models.configs import random_model

    captured: dict[str, Any] = {}

    def solve(self: htg.HTGConfig, ctx: Any) -> Any:
        captured["ctx"] = ctx
        raise Captured

    start = time.perf_counter()
    model = random_model(args.model)
    htg.HTGConfig.solve = solve  # type: ignore[method-assign]
    try:
        calibrate(model, htg.HTGConfig(groups=1), CalibConfig(steps=1, samples=1, progress=False))
    except Captured:
        pass
    ctx = captured["ctx"]
    print(f"statistics: {time.perf_counter() - start:.0f} s, peak {_rss_peak_bytes() / 2**30:.2f} GB", flush=True)

    ranges = [SiteRange(st.ch_max.numpy(), st.ch_min.numpy(), max(st.power, 1e-12)) for st in ctx.stats.values()]
    grouping = group_timesteps(ctx.timesteps, ranges, 1, num_train_timesteps=ctx.num_train_timesteps, bits=8,
                               max_groups=1)
    blocks = site_rotations(ctx, htg.ROTATION_AUTO)
    cfg = htg.HTGConfig() if args.all_candidates else htg.HTGConfig(alphas=(0.5,))
    cands = {}
    for site in ctx.sites:
        opts = cfg._candidates(ctx, site, grouping, blocks[site.name], search=False)
        keep = list(opts) if args.all_candidates else [k for k in opts if k[2] == blocks[site.name]][:2]
        cands[site.name] = {k: (*opts[k][:3], k[2]) for k in keep}

    _reset_peak()
    start = time.perf_counter()
    scorer = FisherScorer(ctx, grouping, n_timesteps=1, batch=args.rows, checkpoint=not args.no_checkpoint)
    tokens = image_tokens(ctx, scorer.inputs[0][0])
    scores = scorer.scores(cands)
    seconds = time.perf_counter() - start
    rec = {"model": args.model, "rows": len(scorer.inputs[0][0]), "tokens_per_row": tokens,
           "checkpoint": not args.no_checkpoint, "threads": args.threads, "sites": len(cands),
           "candidates": sum(map(len, cands.values())),
           "fisher_seconds": round(seconds, 1), "fisher_peak_rss_gb": round(_rss_peak_bytes() / 2**30, 2),
           "mean_score_db": round(sum(v for s in scores.values() for v in s.values())
                                  / sum(map(len, scores.values())), 3)}
    print(json.dumps(rec), flush=True)


if __name__ == "__main__":
    main()
