"""The ONNX-set artifact: ``group_{g}.onnx`` per timestep group, ``reference.onnx``, shared ``weights.bin``.

Lineage: the manifest records the recipe directory the set was exported from (relative to the set) and the sha256
of that recipe's ``manifest.json`` (``parent_sha256``). Every reader goes through :meth:`OnnxArtifact.load`, which
refuses a set whose recipe is still there but has changed since the export (re-calibrated, re-saved); a set whose
recipe has been moved or deleted stands alone. :meth:`OnnxArtifact.load_parent_recipe` gives the recipe itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from ditq.artifacts.base import Artifact
from ditq.errors import DitqError

if TYPE_CHECKING:
    from ditq.artifacts.recipe import Recipe


@dataclass(frozen=True)
class OnnxGroup:
    group_id: int
    interval: tuple[int, int]
    file: str
    sha256: str


@dataclass(frozen=True)
class OnnxArtifact(Artifact):
    KIND: ClassVar[str] = "ditq.onnx"
    REDO: ClassVar[str] = "re-run `ditq export`"

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
    # what the graphs were exported for (``export_onnx(target=...)``): "onnxruntime" (the recipe as calibrated) or
    # "tensorrt" (INT4 as W4A16); ``weight_only``: the Linears exported without activation Q/DQ, which the torch
    # fake-quant reference must then run with float inputs too
    target: str = "onnxruntime"
    weight_only: tuple[str, ...] = ()
    # ``export --single-graph``: {"file", "sha256", "feeds", "feeds_sha256"}: one graph for every group, the group's
    # shifts and activation-scale ratios fed at run time (``ditq.export.single_graph``); None: not exported
    single_graph: dict[str, str] | None = None

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

    def check_parent(self) -> Path | None:
        """The recipe directory this set was exported from when it is still there (else None: the set stands
        alone); a one-line DitqError naming both directories when that recipe changed since the export."""
        rdir = self.recipe_dir
        return self.live_parent(rdir, f"the recipe {rdir} has changed since the ONNX set {self.root} was exported "
                                      f"from it (its manifest no longer matches the set's parent_sha256); re-run "
                                      f"`ditq export {rdir} -o {self.root} --force` (or move the set away from the "
                                      "recipe to use it alone)")

    def load_parent_recipe(self) -> Recipe | None:
        """The recipe this set was exported from, checked against the set's parent hash; None when it is gone."""
        from ditq.artifacts.recipe import Recipe

        rdir = self.check_parent()
        return None if rdir is None else Recipe.load(rdir)

    def check_model(self, model: Any) -> None:
        """Refuse a loaded model that is not the one this set was exported from (its sha256 differs)."""
        if self.model.get("sha256") != model.sha256:
            raise DitqError(f"the model {model.source} (sha256 {model.sha256[:12]}) is not the one the ONNX set "
                            f"{self.root} was exported from ({str(self.model.get('sha256'))[:12]}); re-run "
                            "`ditq calibrate` and `ditq export` on this model")

    def body(self) -> dict[str, Any]:
        return {
            "precision": self.precision, "opset": self.opset,
            "groups": [{"id": g.group_id, "interval": list(g.interval), "file": g.file, "sha256": g.sha256}
                       for g in self.groups],
            "reference": {"file": "reference.onnx", "sha256": self.reference_sha256},
            "data": {"file": "weights.bin", "sha256": self.data_sha256},
            "model": self.model, "scheduler_config": self.scheduler_config, "recipe": self.recipe,
            "seconds": self.seconds, "target": self.target, "weight_only": list(self.weight_only), **self.extra,
            **({"single_graph": self.single_graph} if self.single_graph else {}),
        }

    @classmethod
    def from_body(cls, root: Path, body: dict[str, Any]) -> OnnxArtifact:
        return cls(
            root=root, precision=body["precision"], opset=int(body["opset"]),
            groups=tuple(OnnxGroup(int(g["id"]), (int(g["interval"][0]), int(g["interval"][1])), g["file"],
                                   g["sha256"]) for g in body["groups"]),
            reference_sha256=body["reference"]["sha256"], data_sha256=body["data"]["sha256"],
            model=body["model"], scheduler_config=body["scheduler_config"], recipe=body["recipe"],
            parent_sha256=body.get("parent_sha256"), seconds=float(body.get("seconds", 0.0)),
            target=body.get("target", "onnxruntime"), weight_only=tuple(body.get("weight_only", ())),
            single_graph=body.get("single_graph"),
        )

    @classmethod
    def load(cls, root: Path, *, verify: bool = True, check_parent: bool = True) -> OnnxArtifact:
        """Read the manifest; with ``verify``, every file must exist and match its recorded sha256; with
        ``check_parent``, the recipe it was exported from must be unchanged where it is still present."""
        art = cls.read(root)
        root = art.root
        if [g.group_id for g in art.groups] != list(range(len(art.groups))) or not art.groups:
            raise DitqError(f"{root}/manifest.json must list groups 0..G-1; re-run `ditq export`")
        if verify:
            art.verify_files([*((g.file, g.sha256) for g in art.groups), ("reference.onnx", art.reference_sha256),
                              ("weights.bin", art.data_sha256),
                              *([(art.single_graph["file"], art.single_graph["sha256"]),
                                 (art.single_graph["feeds"], art.single_graph["feeds_sha256"])]
                                if art.single_graph else [])], redo="re-run export")
        if check_parent:
            art.check_parent()
        return art
