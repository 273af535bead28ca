"""Conditioning as named tensors: ``Cond = {input name: batch tensor}`` (class labels, or caption embeddings and
their mask), the names being the ONNX graph's inputs after ``hidden_states`` and ``timestep``."""

from __future__ import annotations

from collections.abc import Mapping

import torch

Cond = dict[str, torch.Tensor]


def batch_size(cond: Mapping[str, torch.Tensor]) -> int:
    return int(next(iter(cond.values())).shape[0])


def cat_cond(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> Cond:
    return {k: torch.cat([a[k], b[k]]) for k in a}


def select(cond: Mapping[str, torch.Tensor], rows: torch.Tensor | slice) -> Cond:
    return {k: v[rows] for k, v in cond.items()}
