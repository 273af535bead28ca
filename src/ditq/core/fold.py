"""Exact re-parameterisation (DESIGN §3.5): fold per-group channel shifts z and per-site channel scales s.

Every step below is a function-preserving rewrite of the current state dict, so sites fold in any order:
- a site's consumers:   W' = W diag(s),  b' = b + W z           (its input becomes (x - z) / s)
- "adaln" producer:     shift rows  W_sh / s, (b_sh - z) / s;  scale rows  W_sc / s, (1 + b_sc) / s - 1
- "v_proj" producer:    W_v' = diag(1/s) W_v,  b_v' = (b_v - z) / s     (softmax rows sum to one)
- "table" producer:     PixArt's ``scale_shift_table`` shift row - z; a scale s != 1 stays an explicit ``x * (1/s)``
                        (zero-shift pre-affine): the time-dependent part comes from a Linear all blocks share
- "explicit":           an explicit ``(x - z) * (1/s)`` before the quantizer, returned as a pre-affine.
- ``biases``:            per-Linear additions to the bias (a recipe's per-group bias correction), b' = b + c.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from ditq.core.sites import Site

PreAffine = dict[str, tuple[torch.Tensor, torch.Tensor]]  # site name -> (shift, inverse scale)


def fold_state(
    state: Mapping[str, torch.Tensor],
    sites: Sequence[Site],
    shifts: Mapping[str, torch.Tensor],
    smooth: Mapping[str, torch.Tensor],
    biases: Mapping[str, torch.Tensor] | None = None,
) -> tuple[dict[str, torch.Tensor], PreAffine]:
    """Fold one group's shifts and the shared smoothing scales into a copy of ``state``, and add ``biases``
    (Linear name -> [N], e.g. the group's bias correction) to those Linears' biases.

    Returns the folded state dict and the explicit pre-affines of sites whose shift or scale does not fold away.
    Arithmetic is in float64; changed matrices are stored back in their own dtype after each step and vectors
    stay float64 until the end (the folded model matches to ~1e-6). Unchanged tensors are the very tensors of
    ``state``, not copies: a 2.8 GB model folds with one extra copy of what changes, not three.
    """
    class _CopyOnRead(dict):  # type: ignore[type-arg]
        def __missing__(self, key: str) -> torch.Tensor:
            value = state[key].detach()
            value = value.clone() if value.dim() >= 2 else value.to(torch.float64).clone()
            super().__setitem__(key, value)
            return value

        def __setitem__(self, key: str, value: torch.Tensor) -> None:
            super().__setitem__(key, value.to(state[key].dtype) if value.dim() >= 2 else value)

    sd = touched = _CopyOnRead()
    pre: PreAffine = {}
    for site in sites:
        z = shifts[site.name].to(torch.float64)
        s = smooth[site.name].to(torch.float64)
        if not (z.any() or (s != 1).any()):
            continue
        for lin in site.linears:
            w, b = sd[f"{lin}.weight"], sd[f"{lin}.bias"]
            sd[f"{lin}.bias"] = b + w.to(torch.float64) @ z
            sd[f"{lin}.weight"] = w * s
        if site.fold == "adaln":
            w, b = sd[f"{site.producer}.weight"], sd[f"{site.producer}.bias"]
            dim = z.numel()
            sh = slice(site.shift_chunk * dim, (site.shift_chunk + 1) * dim)
            sc = slice(site.scale_chunk * dim, (site.scale_chunk + 1) * dim)
            w[sh], b[sh] = w[sh] / s[:, None], (b[sh] - z) / s
            w[sc], b[sc] = w[sc] / s[:, None], (1 + b[sc]) / s - 1
        elif site.fold == "v_proj":
            w, b = sd[f"{site.producer}.weight"], sd[f"{site.producer}.bias"]
            sd[f"{site.producer}.weight"], sd[f"{site.producer}.bias"] = w / s[:, None], (b - z) / s
        elif site.fold == "table":
            table = sd[site.producer]
            table[site.shift_chunk] = table[site.shift_chunk] - z
            if (s != 1).any():
                pre[site.name] = (torch.zeros_like(z).float(), (1 / s).float())
        elif site.fold == "explicit":
            pre[site.name] = (z.float(), (1 / s).float())
        else:
            raise ValueError(f"unknown fold kind {site.fold!r}")
    for lin, c in (biases or {}).items():
        sd[f"{lin}.bias"] = sd[f"{lin}.bias"] + c.to(torch.float64)
    return {**state, **{k: v.to(state[k].dtype) for k, v in touched.items()}}, pre


def foldable_params(sites: Sequence[Site]) -> set[str]:
    """Every parameter ``fold_state`` may change besides the quantized weights: biases and producers."""
    keys: set[str] = set()
    for site in sites:
        keys |= {f"{lin}.bias" for lin in site.linears}
        if site.fold in ("adaln", "v_proj"):
            keys |= {f"{site.producer}.weight", f"{site.producer}.bias"}
        elif site.fold == "table":
            keys.add(str(site.producer))
    return keys
