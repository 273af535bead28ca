"""The engine-set artifact: ``group_{g}.plan`` per timestep group, one shared ``timing.cache``, ``manifest.json``.

A TensorRT plan only runs on the TensorRT version and the GPU architecture it was built for, so the manifest
records both and :meth:`EngineArtifact.load` refuses a set that does not match this machine (or its own files), or
whose ONNX set (recorded relative to it) is still present but changed since the build.
The two runtime queries (``ditq._deps``: :func:`~ditq._deps.require_tensorrt`, :func:`~ditq._deps.require_gpu`)
import tensorrt / torch only when called.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from ditq._deps import require_gpu, require_tensorrt
from ditq.artifacts.base import Artifact
from ditq.errors import DitqError

TIMING_CACHE = "timing.cache"


@dataclass(frozen=True)
class EngineGroup:
    group_id: int
    interval: tuple[int, int]
    file: str  # group_{g}.plan
    sha256: str  # of the plan
    onnx_file: str
    onnx_sha256: str  # of the ONNX graph it was built from
    polygraphy: str  # the equivalent `polygraphy convert ...` command line, run from the engine directory
    seconds: float = 0.0


@dataclass(frozen=True)
class EngineArtifact(Artifact):
    KIND: ClassVar[str] = "ditq.engines"
    REDO: ClassVar[str] = "re-run `ditq build`"

    root: Path
    trt_version: str
    gpu_name: str
    compute_capability: str  # "sm_90"
    precision: str  # float type of the graphs outside INT8 (fp32 / fp16)
    groups: tuple[EngineGroup, ...]
    profile: dict[str, dict[str, list[int]]]  # input -> {"min", "opt", "max"} shapes
    builder: dict[str, Any]  # strongly_typed, network_flags, builder flags, optimization level, workspace
    onnx_dir: str | None  # the ONNX set, relative to root
    parent_sha256: str  # sha256 of the ONNX set's manifest.json
    model: dict[str, Any]
    scheduler_config: dict[str, Any]
    recipe: dict[str, Any]
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def device(self) -> str:
        return f"{self.gpu_name} / {self.compute_capability}"

    @property
    def intervals(self) -> list[tuple[int, int]]:
        return [g.interval for g in self.groups]

    @property
    def batch_range(self) -> tuple[int, int]:
        """The (min, max) batch every engine's optimisation profile accepts."""
        shapes = next(iter(self.profile.values()))
        return shapes["min"][0], shapes["max"][0]

    def path(self, group_id: int) -> Path:
        return self.root / self.groups[group_id].file

    def body(self) -> dict[str, Any]:
        return {
            "tensorrt_version": self.trt_version,
            "gpu": {"name": self.gpu_name, "compute_capability": self.compute_capability},
            "device": self.device, "precision": self.precision,
            "profile": self.profile, "builder": self.builder,
            "groups": [{"id": g.group_id, "interval": list(g.interval), "file": g.file, "sha256": g.sha256,
                        "onnx_file": g.onnx_file, "onnx_sha256": g.onnx_sha256, "polygraphy": g.polygraphy,
                        "seconds": g.seconds} for g in self.groups],
            "timing_cache": TIMING_CACHE,
            "onnx": {"dir": self.onnx_dir, "sha256": self.parent_sha256},
            "model": self.model, "scheduler_config": self.scheduler_config, "recipe": self.recipe,
            "seconds": self.seconds, **self.extra,
        }

    @classmethod
    def from_body(cls, root: Path, body: dict[str, Any]) -> EngineArtifact:
        return cls(
            root=root, trt_version=str(body["tensorrt_version"]), gpu_name=str(body["gpu"]["name"]),
            compute_capability=str(body["gpu"]["compute_capability"]), precision=str(body["precision"]),
            groups=tuple(EngineGroup(int(g["id"]), (int(g["interval"][0]), int(g["interval"][1])), g["file"],
                                     g["sha256"], g["onnx_file"], g["onnx_sha256"], g["polygraphy"],
                                     float(g.get("seconds", 0.0))) for g in body["groups"]),
            profile={k: {e: [int(d) for d in v[e]] for e in ("min", "opt", "max")}
                     for k, v in body["profile"].items()},
            builder=dict(body["builder"]), onnx_dir=body["onnx"]["dir"], parent_sha256=body["parent_sha256"],
            model=body["model"], scheduler_config=body["scheduler_config"], recipe=body["recipe"],
            seconds=float(body.get("seconds", 0.0)),
        )

    @classmethod
    def load(cls, root: Path, *, check_runtime: bool = True, check_parent: bool = True) -> EngineArtifact:
        """Read the manifest and check every plan's sha256; with ``check_runtime`` also refuse a set built for
        another TensorRT version or GPU architecture than this machine's; with ``check_parent`` one whose ONNX set
        is still present but changed since the build (one-line DitqError each)."""
        art = cls.read(root)
        root = art.root
        rebuild = art.rebuild_hint()
        if not art.groups or [g.group_id for g in art.groups] != list(range(len(art.groups))) or not art.profile:
            raise DitqError(f"{root}/manifest.json must list groups 0..G-1 and a profile; {rebuild}")
        art.verify_files(((g.file, g.sha256) for g in art.groups), redo=rebuild)
        if check_parent:
            art.check_parent()
        if check_runtime:
            art.check_runtime()
        return art

    @property
    def onnx_path(self) -> Path | None:
        """The ONNX set these engines were built from (recorded relative to the engine directory)."""
        return Path(os.path.normpath(self.root / self.onnx_dir)) if self.onnx_dir else None

    def check_parent(self) -> Path | None:
        """The ONNX set these engines were built from when it is still there (else None: the engines stand
        alone); a one-line DitqError naming both directories when that set changed since the build."""
        onnx = self.onnx_path
        return self.live_parent(onnx, f"the ONNX set {onnx} has changed since the engines in {self.root} were built "
                                      f"from it (its manifest no longer matches the engines' parent_sha256); "
                                      f"{self.rebuild_hint()}")

    def rebuild_hint(self) -> str:
        onnx = self.onnx_path or "ONNX_DIR"
        return f"rebuild with `ditq build {onnx} -o {self.root} --force`"

    def check_runtime(self) -> None:
        """Refuse plans this machine cannot deserialize: other TensorRT version, other GPU architecture."""
        installed = require_tensorrt()
        if installed != self.trt_version:
            raise DitqError(f"the engines in {self.root} were built with TensorRT {self.trt_version} but "
                            f"{installed} is installed; {self.rebuild_hint()}")
        name, sm = require_gpu()
        if sm != self.compute_capability:
            raise DitqError(f"the engines in {self.root} were built for {self.device} but this GPU is "
                            f"{name} / {sm}; {self.rebuild_hint()}")
