"""The backend interface: activate / infer / deactivate, ``with`` pairs them, groups picked by timestep."""

from __future__ import annotations

import pytest
import torch

from ditq.errors import DitqError
from ditq.runtime.backends import open_backend
from ditq.runtime.backends.base import Backend, GroupedBackend


def test_opened_backends_are_active_and_can_be_deactivated_and_reactivated(tiny_onnx, feeds):
    backend, _ = open_backend(tiny_onnx.root, "onnxruntime", fuse=False)
    assert isinstance(backend, Backend) and backend.is_active
    (x, t, y), = feeds([500.0], batch=2)
    ref = backend(x, t, y)
    backend.deactivate()
    assert not backend.is_active and list(backend.fns) == []
    with pytest.raises(DitqError, match="onnxruntime-exact backend is not active; call activate"):
        backend(x, t, y)
    with backend as active:  # activates again: the sessions are created anew
        assert active is backend and backend.is_active
        torch.testing.assert_close(backend.infer(x, t, y), ref)
    assert not backend.is_active
    backend.deactivate()  # a no-op when inactive
    assert backend.calls[backend.group_of(500.0)] == 2


def test_a_backend_built_from_callables_cannot_be_reactivated():
    backend = GroupedBackend("fn", [(0, 499), (500, 999)], [lambda x, t, c: x, lambda x, t, c: -x])
    x = torch.ones(1, 1, 2, 2)
    with backend:  # already active: activate() is a no-op, and the exit deactivates it
        assert backend(x, torch.tensor([700.0]), {}).sum() == -4 and backend.calls == [0, 1]
    with pytest.raises(DitqError, match="fn backend was built from callables and cannot be re-activated"):
        backend.activate()
