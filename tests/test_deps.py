"""``ditq._deps.trt``: one lazy handle on TensorRT that imports on use, names the install, and follows sys.modules."""

from __future__ import annotations

import sys
import types

import pytest

from ditq import _deps
from ditq.errors import DitqError


def test_missing_tensorrt_is_a_one_line_error_naming_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # as on a machine without it
    with pytest.raises(DitqError, match=r"tensorrt is needed for this step .*pip install 'ditq\[trt\]'") as err:
        _deps.trt.Builder  # noqa: B018
    assert "\n" not in str(err.value)
    assert _deps.installed_tensorrt_version() is None
    with pytest.raises(DitqError, match="tensorrt is needed for this step and is not installed"):
        _deps.require_tensorrt()


def test_the_proxy_follows_the_module_in_sys_modules(monkeypatch):
    fake = types.ModuleType("tensorrt")
    fake.__version__, fake.Builder = "10.13.0.35", object
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    assert _deps.trt.Builder is object and _deps.require_tensorrt() == "10.13.0.35"
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # not cached by the proxy: now it is gone again
    assert _deps.installed_tensorrt_version() is None


def test_stub_only_namespace_and_old_versions_do_not_count(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", types.ModuleType("tensorrt"))  # tensorrt-stubs alone
    assert _deps.installed_tensorrt_version() is None
    old = types.ModuleType("tensorrt")
    old.__version__, old.Builder = "8.6.1", object
    monkeypatch.setitem(sys.modules, "tensorrt", old)
    with pytest.raises(DitqError, match=r"TensorRT 8\.6\.1 is too old"):
        _deps.require_tensorrt()
