"""Backends are looked up by name: the CLI offers exactly the registered names, ``torch`` is a deprecated alias."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import torch

from ditq.cli.sample import BACKENDS
from ditq.errors import DitqError
from ditq.runtime.backends import registry
from ditq.runtime.backends.base import GroupedBackend
from ditq.runtime.backends.registry import (
    DEPRECATED_ALIASES,
    BackendEntry,
    backend_names,
    get_backend,
    open_backend,
    register,
)


def test_cli_backend_choices_are_the_registry_and_its_aliases():
    # the static tuple lets `ditq --help` build without importing torch
    assert BACKENDS == (*backend_names(), *DEPRECATED_ALIASES)


def test_fake_quant_and_torch_int8_have_different_names():
    assert {"fake-quant", "torch-int8", "onnxruntime", "tensorrt"} <= set(backend_names())
    assert get_backend("fake-quant").open is not get_backend("torch-int8").open
    assert get_backend("tensorrt").device == "cuda" and get_backend("onnxruntime").device == "cpu"


def test_unknown_backend_is_refused_naming_the_choices(tiny_onnx):
    with pytest.raises(DitqError, match="unknown backend 'int4'; choose one of fake-quant, onnxruntime, "
                                        "tensorrt, torch-int8") as err:
        open_backend(tiny_onnx.root, "int4")
    assert "\n" not in str(err.value)


def test_torch_is_a_deprecated_alias_of_fake_quant(tiny_onnx, caplog):
    with caplog.at_level(logging.WARNING, logger="ditq"):
        backend, _ = open_backend(tiny_onnx.root, "torch")
    assert backend.name == "fake-quant-htg"
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and "'torch' is deprecated" in warned[0] and "fake-quant" in warned[0]
    assert "\n" not in warned[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ditq"):
        open_backend(tiny_onnx.root, "fake-quant")
    assert not caplog.records


def test_a_registered_backend_is_opened_by_its_name(tmp_path, monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    opened = []

    def opener(path, **options):
        opened.append((path, options))
        info = {"conditioning": SimpleNamespace(kind="class", num=4), "scheduler_config": None}
        return GroupedBackend("echo", [(0, 999)], [lambda x, t, cond: x]), info

    register(BackendEntry("echo", opener, "anything"))
    assert "echo" in backend_names()
    backend, _ = open_backend(tmp_path, "echo", threads=2)
    assert opened == [(tmp_path, {"fp": False, "threads": 2, "fuse": None, "scheduler": None})]
    assert backend.num_classes == 4
    x = torch.ones(1, 1, 2, 2)
    assert backend(x, torch.tensor([3.0]), {"class_labels": torch.tensor([4])}) is x
    with pytest.raises(DitqError, match="deprecated alias"):
        register(BackendEntry("torch", opener, "anything"))
