"""The per-group feeds of a single graph (``ditq export --single-graph``): ``<graph stem>_feeds.safetensors`` beside
the graph, keys ``g{k}/{input}``: the tensors that select group k (its shifts and activation-scale ratios)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def feeds_path(graph: Path) -> Path:
    return Path(graph).with_name(Path(graph).stem + "_feeds.safetensors")


def save_feeds(graph: Path, feeds: list[dict[str, np.ndarray]]) -> Path:
    from safetensors.numpy import save_file

    path = feeds_path(graph)
    save_file({f"g{k}/{name}": np.ascontiguousarray(v) for k, f in enumerate(feeds) for name, v in f.items()},
              str(path))
    return path


def load_feeds(graph: Path, groups: int) -> list[dict[str, np.ndarray]]:
    """Group k's inputs, k = 0..groups-1."""
    from safetensors.numpy import load_file

    feeds: list[dict[str, np.ndarray]] = [{} for _ in range(groups)]
    for key, value in load_file(str(feeds_path(graph))).items():
        g, name = key.split("/", 1)
        feeds[int(g[1:])][name] = value
    return feeds
