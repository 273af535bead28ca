"""The recipe artifact: what calibration decided, read by export and the torch backend.

``recipe/`` = ``manifest.json`` + ``recipe.json`` (method, bits, groups as timestep intervals, per-site options)
+ ``scales.safetensors`` with keys ``g{group}/{site}.shift``, ``g{group}/{site}.act_scale``, ``{site}.smooth``
and ``{linear}.w_scale``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from ditq.artifacts import read_manifest, write_json, write_manifest
from ditq.errors import DitqError

RECIPE_JSON = "recipe.json"
SCALES = "scales.safetensors"


@dataclass(frozen=True)
class GroupSpec:
    group_id: int
    interval: tuple[int, int]  # inclusive timestep interval on the training axis
    timesteps: tuple[int, ...]  # calibration timesteps inside it


@dataclass(frozen=True)
class SiteSpec:
    name: str
    linears: tuple[str, ...]
    alpha: float | None = None  # smoothing exponent chosen (None: no smoothing)


@dataclass
class Recipe:
    KIND: ClassVar[str] = "ditq.recipe"

    method: str
    params: dict[str, Any]
    model_source: str
    model_sha256: str
    num_train_timesteps: int
    w_bits: int
    a_bits: int
    groups: tuple[GroupSpec, ...]
    sites: tuple[SiteSpec, ...]
    tensors: dict[str, torch.Tensor]
    calibration: dict[str, Any] = field(default_factory=dict)
    cost_curve: tuple[float, ...] = ()

    # -- accessors -------------------------------------------------------------------------------------------
    @property
    def num_groups(self) -> int:
        return len(self.groups)

    def shift(self, site: str, group_id: int) -> torch.Tensor:
        return self.tensors[f"g{group_id}/{site}.shift"]

    def act_scale(self, site: str, group_id: int) -> torch.Tensor:
        return self.tensors[f"g{group_id}/{site}.act_scale"]

    def smooth(self, site: str) -> torch.Tensor:
        return self.tensors[f"{site}.smooth"]

    def w_scale(self, linear: str) -> torch.Tensor:
        return self.tensors[f"{linear}.w_scale"]

    def group_of(self, timestep: float) -> int:
        t = int(round(float(timestep)))
        for g in self.groups:
            if g.interval[0] <= t <= g.interval[1]:
                return g.group_id
        raise DitqError(f"timestep {timestep} is outside the recipe's range [0, {self.num_train_timesteps - 1}]")

    def body(self) -> dict[str, Any]:
        return {
            "method": {"name": self.method, "version": 1, "params": self.params},
            "model": {"source": self.model_source, "sha256": self.model_sha256},
            "num_train_timesteps": self.num_train_timesteps,
            "w_bits": self.w_bits,
            "a_bits": self.a_bits,
            "groups": [
                {"id": g.group_id, "interval": list(g.interval), "timesteps": list(g.timesteps)} for g in self.groups
            ],
            "cost_curve": list(self.cost_curve),
            "sites": [{"name": s.name, "linears": list(s.linears), "alpha": s.alpha} for s in self.sites],
            "calibration": self.calibration,
        }

    # -- persistence -----------------------------------------------------------------------------------------
    def save(self, root: Path) -> None:
        from safetensors.torch import save_file

        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.tensors.items()}, str(root / SCALES))
        write_json(root / RECIPE_JSON, self.body())
        write_manifest(root, self.KIND, {"method": self.method, "num_groups": self.num_groups,
                                         "model_sha256": self.model_sha256})

    @classmethod
    def load(cls, root: Path) -> Recipe:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        root = Path(root)
        read_manifest(root, cls.KIND)
        try:
            body = json.loads((root / RECIPE_JSON).read_text())
            tensors = load_file(str(root / SCALES))
        except FileNotFoundError as err:
            missing = Path(err.filename).name
            raise DitqError(f"recipe {root} is incomplete: {missing} is missing; re-run calibrate") from err
        except (json.JSONDecodeError, UnicodeDecodeError, SafetensorError, OSError) as err:
            raise DitqError(f"recipe {root} is damaged ({err.__class__.__name__}); re-run `ditq calibrate`") from err
        try:
            recipe = cls(
                method=body["method"]["name"],
                params=dict(body["method"]["params"]),
                model_source=body["model"]["source"],
                model_sha256=body["model"]["sha256"],
                num_train_timesteps=int(body["num_train_timesteps"]),
                w_bits=int(body["w_bits"]),
                a_bits=int(body["a_bits"]),
                groups=tuple(GroupSpec(int(g["id"]), (int(g["interval"][0]), int(g["interval"][1])),
                                       tuple(int(t) for t in g["timesteps"])) for g in body["groups"]),
                sites=tuple(SiteSpec(s["name"], tuple(s["linears"]), s.get("alpha")) for s in body["sites"]),
                tensors=tensors,
                calibration=dict(body.get("calibration", {})),
                cost_curve=tuple(float(c) for c in body.get("cost_curve", [])),
            )
        except (KeyError, TypeError, ValueError, IndexError) as err:
            raise DitqError(f"{root / RECIPE_JSON} is malformed (bad or missing field {err}); "
                            "re-run calibrate") from err
        recipe.check()
        return recipe

    def check(self) -> None:
        """Internal consistency: groups tile the timestep axis and every tensor the sites need is present."""
        if [g.group_id for g in self.groups] != list(range(len(self.groups))) or not self.groups:
            raise DitqError("recipe groups must be numbered 0..G-1; re-run `ditq calibrate`")
        edges = sorted(g.interval for g in self.groups)
        ok = edges[0][0] == 0 and edges[-1][1] == self.num_train_timesteps - 1 and all(
            a[1] + 1 == b[0] for a, b in zip(edges, edges[1:]))
        if not ok:
            raise DitqError(f"recipe group intervals {edges} do not tile [0, {self.num_train_timesteps - 1}]")
        need = [f"{s.name}.smooth" for s in self.sites] + [f"{lin}.w_scale" for s in self.sites for lin in s.linears]
        need += [f"g{g.group_id}/{s.name}.{k}" for g in self.groups for s in self.sites for k in ("shift", "act_scale")]
        missing = [k for k in need if k not in self.tensors]
        if missing:
            raise DitqError(f"{SCALES} lacks {len(missing)} tensors the recipe names (first: {missing[0]}); "
                            "re-run `ditq calibrate`")
