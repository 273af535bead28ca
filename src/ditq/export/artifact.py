"""The ONNX-set artifact: ``group_{g}.onnx`` per timestep group, ``reference.onnx``, shared ``weights.bin``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from ditq.artifacts import read_manifest, sha256_file, write_manifest
from ditq.errors import DitqError


@dataclass(frozen=True)
class OnnxGroup:
    group_id: int
    interval: tuple[int, int]
    file: str
    sha256: str


@dataclass(frozen=True)
class OnnxArtifact:
    KIND: ClassVar[str] = "ditq.onnx"

    root: Path
    precision: str
    opset: int
    groups: tuple[OnnxGroup, ...]
    reference_sha256: str
    data_sha256: str
    model: dict[str, Any]
    scheduler_config: dict[str, Any]
    recipe: dict[str, Any]
    parent_sha256: str | None = None
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def intervals(self) -> list[tuple[int, int]]:
        return [g.interval for g in self.groups]

    def path(self, group_id: int | None) -> Path:
        """The graph of a group, or the FP reference for ``None``."""
        return self.root / ("reference.onnx" if group_id is None else self.groups[group_id].file)

    @property
    def recipe_dir(self) -> Path | None:
        """The recipe this set was exported from (recorded relative to the set, so both can move together)."""
        rel = self.recipe.get("dir")
        return (self.root / rel).resolve() if rel else None

    def save(self) -> None:
        write_manifest(self.root, self.KIND, {
            "precision": self.precision, "opset": self.opset,
            "groups": [{"id": g.group_id, "interval": list(g.interval), "file": g.file, "sha256": g.sha256}
                       for g in self.groups],
            "reference": {"file": "reference.onnx", "sha256": self.reference_sha256},
            "data": {"file": "weights.bin", "sha256": self.data_sha256},
            "model": self.model, "scheduler_config": self.scheduler_config, "recipe": self.recipe,
            "seconds": self.seconds, **self.extra,
        }, parent_sha256=self.parent_sha256)

    @classmethod
    def load(cls, root: Path, *, verify: bool = True) -> OnnxArtifact:
        """Read the manifest; with ``verify``, every file must exist and match its recorded sha256."""
        root = Path(root)
        body = read_manifest(root, cls.KIND)
        try:
            art = cls(
                root=root, precision=body["precision"], opset=int(body["opset"]),
                groups=tuple(OnnxGroup(int(g["id"]), (int(g["interval"][0]), int(g["interval"][1])), g["file"],
                                       g["sha256"]) for g in body["groups"]),
                reference_sha256=body["reference"]["sha256"], data_sha256=body["data"]["sha256"],
                model=body["model"], scheduler_config=body["scheduler_config"], recipe=body["recipe"],
                parent_sha256=body.get("parent_sha256"), seconds=float(body.get("seconds", 0.0)),
            )
        except (KeyError, TypeError, ValueError, IndexError) as err:
            raise DitqError(f"{root}/manifest.json is malformed (bad or missing field {err}); re-run export") from err
        if [g.group_id for g in art.groups] != list(range(len(art.groups))) or not art.groups:
            raise DitqError(f"{root}/manifest.json must list groups 0..G-1; re-run `ditq export`")
        if verify:
            expected = [(g.file, g.sha256) for g in art.groups]
            expected += [("reference.onnx", art.reference_sha256), ("weights.bin", art.data_sha256)]
            for name, digest in expected:
                path = root / name
                if not path.is_file():
                    raise DitqError(f"{path} is missing; the ONNX set does not match its manifest, re-run export")
                if sha256_file(path) != digest:
                    raise DitqError(f"{path} does not match the sha256 in its manifest; re-run `ditq export`")
        return art
