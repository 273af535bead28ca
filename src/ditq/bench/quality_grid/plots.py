"""The grid's plots: W4A8 sample images per method (PIL) and, with matplotlib, per-step SQNR over timesteps."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


def write_plots(result: dict[str, Any], out: Path, grid_rows: dict[str, torch.Tensor] | None) -> dict[str, Any]:
    """``samples_w4a8.png`` (PIL; rows FP then each method) and, with matplotlib, ``sqnr_over_timesteps.png``."""
    from ditq._deps import has_module
    from ditq.runtime.images import save_grid

    files, note = [], ""
    if grid_rows and len(grid_rows) > 1:
        save_grid(list(grid_rows.values()), out / "samples_w4a8.png", cols=min(10, grid_rows["fp"].shape[0]))
        files.append("samples_w4a8.png")
        note = f"samples_w4a8.png rows: {', '.join(grid_rows)} (W4A8, {max(result['config']['steps'])} steps)."
    if not has_module("matplotlib"):
        return {"files": files, "note": note + " SQNR plot skipped: matplotlib is not installed "
                "(pip install 'ditq[plot]')."}
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = max(result["config"]["steps"])
    bits_list = result["config"]["bits"]
    fig, axes = plt.subplots(1, len(bits_list), figsize=(6.5 * len(bits_list), 4.2), squeeze=False)
    for ax, bits in zip(axes[0], bits_list):
        seeds = result.get("calib_seeds") or [None]  # several calibration seeds: the first seed's curves
        for r in result["cells"] + result["peers"]:
            if r["bits"] == bits and r["steps"] == steps and r.get("calib_seed", seeds[0]) == seeds[0]:
                ax.plot(r["timesteps"], r["sqnr_per_step_db"], label=r["method"],
                        linestyle="--" if r["method"].startswith("modelopt") else "-")
        htg = (result["recipes"].get(f"htg-{bits}")  # the default htg row's groups
               or result["recipes"].get(f"htg-{bits}-seed{seeds[0]}"))
        for lo, _hi in (htg["groups"][1:] if htg else []):
            ax.axvline(lo - 0.5, color="grey", linewidth=0.8, linestyle=":")
        ax.set_title(f"{bits}, {steps} steps" + (" (dotted: HTG group boundaries)" if htg else ""))
        ax.set_xlabel("timestep")
        ax.set_ylabel("output SQNR vs FP (dB)")
        ax.invert_xaxis()  # the sampler's direction
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "sqnr_over_timesteps.png", dpi=110)
    plt.close(fig)
    files.append("sqnr_over_timesteps.png")
    return {"files": files, "note": note}
