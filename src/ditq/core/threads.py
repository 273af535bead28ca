"""torch's intra-op thread count for one block of work, the caller's count restored afterwards (on errors too)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[int]:
    """Inside, torch runs ``n`` intra-op threads (unchanged for ``None`` or 0); yields the caller's count.

    A library call that changes the process-wide count must give it back: a user's notebook, a test worker or the
    caller's own loop keeps running after it. ``torch.set_num_threads`` is process-wide, so this is not thread-safe,
    as torch's own setting is not."""
    caller = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield caller
    finally:
        torch.set_num_threads(caller)
