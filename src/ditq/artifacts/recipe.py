"""The recipe artifact: what calibration decided, read by export and the torch backend.

``recipe/`` = ``manifest.json`` + ``recipe.json`` (method, bits, groups as timestep intervals, per-site options)
+ ``scales.safetensors`` with keys ``g{group}/{site}.shift``, ``g{group}/{site}.act_scale``, ``{site}.smooth``
and ``{linear}.w_scale``.

Per-linear quantizer specs (``recipe.json`` ``"linears"``; format additions, all optional): weight bits (8 | 4) and
block along the input (0 = per output channel, scales [N]; else scales [N, K / block]), activation mode
(``static`` per-tensor per group | ``dynamic_token`` | ``dynamic_group`` with ``a_group`` channels) and an online
block-Hadamard ``rotation`` (block size, 0 = none; the weight is quantized after ``W @ R``). A recipe without them
(or a linear missing from them) is the original W8A8 static per-tensor / per-channel recipe.
``fmt``: the grid of weight and static activation, ``"int"`` (default; absent in recipes written before FP8) or
``"fp8_e4m3"`` (W8A8-FP8: E4M3 per-channel weights, per-tensor per-group activations, scale = amax / 448).
``"dynamic_activations": true`` marks a recipe with any run-time activation scale (per token: TensorRT Q/DQ form;
per token and channel group: float ops, not TensorRT-INT8-deployable).
``"weight_rounding": "gptq"`` (absent = ``"nearest"``, every recipe before it): the weight codes are stored, one
``{linear}.w_codes`` tensor [N, K] per quantized Linear (int8; float16 E4M3 values for FP8), in the rotated domain
when the Linear rotates; without it every consumer rounds ``W / w_scale`` to nearest. ``Recipe.weight_codes`` is the
one place that answers either way.
``"bias_correction": true`` (absent = false, every recipe before it): ``g{group}/{linear}.bias_correction`` [N] per
group and static quantized Linear, added to the folded bias of that group (``Recipe.fold``): minus the mean output
error of the quantized Linear on the group's calibration inputs. It costs nothing at run time (each group's graph
has its own biases already: the shift folds into them).
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from ditq.artifacts import read_manifest, sha256_file, write_json, write_manifest
from ditq.core.fold import PreAffine, fold_state
from ditq.core.groups import TimestepGroups
from ditq.core.quantizers import FORMATS, WEIGHT_ROUNDINGS, qrange, quantize_weight, rotate_weight
from ditq.core.sites import Site
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


ACT_MODES = ("static", "dynamic_token", "dynamic_group")


@dataclass(frozen=True)
class LinearSpec:
    """How one quantized Linear is quantized (defaults: the original W8A8 static recipe)."""

    w_bits: int = 8
    w_block: int = 0  # 0: one scale per output channel; else blocks of w_block input channels
    act: str = "static"  # static (per tensor, per group) | dynamic_token | dynamic_group
    a_bits: int = 8
    a_group: int = 0  # channels per dynamic group (act = dynamic_group)
    rotation: int = 0  # online block-Hadamard size applied to the input (0: none)
    fmt: str = "int"  # int | fp8_e4m3 (E4M3 weights per output channel and static per-tensor activations)

    def __post_init__(self) -> None:
        if self.fmt not in FORMATS:
            raise DitqError(f"quantizer format {self.fmt!r} is not one of {', '.join(FORMATS)}")
        if self.fmt == "fp8_e4m3" and (self.w_bits, self.a_bits, self.w_block, self.act, self.rotation) != (
                8, 8, 0, "static", 0):
            raise DitqError(f"FP8 E4M3 takes 8-bit per-channel weights and static 8-bit activations without "
                            f"rotation, got W{self.w_bits}A{self.a_bits} block {self.w_block} {self.act} "
                            f"rotation {self.rotation}; use fmt='int' for those")
        if self.w_bits not in (4, 8) or not 2 <= self.a_bits <= 8:
            raise DitqError(f"unsupported bits W{self.w_bits}A{self.a_bits}; weights take 8 or 4, activations 2..8")
        if self.act not in ACT_MODES:
            raise DitqError(f"activation mode {self.act!r} is not one of {', '.join(ACT_MODES)}")
        if (self.act == "dynamic_group") != (self.a_group > 0) or self.w_block < 0:
            raise DitqError(f"a_group must be > 0 exactly for dynamic_group activations, got {self.act}/{self.a_group}")
        if self.rotation < 0 or self.rotation & (self.rotation - 1):
            raise DitqError(f"rotation must be 0 or a power of two, got {self.rotation}")

    @property
    def dynamic(self) -> bool:
        return self.act != "static"

    def body(self) -> dict[str, Any]:
        body = {"w_bits": self.w_bits, "w_block": self.w_block, "act": self.act, "a_bits": self.a_bits,
                "a_group": self.a_group, "rotation": self.rotation}
        return body if self.fmt == "int" else {**body, "fmt": self.fmt}  # integer specs read as before

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> LinearSpec:
        return cls(w_bits=int(body["w_bits"]), w_block=int(body["w_block"]), act=str(body["act"]),
                   a_bits=int(body["a_bits"]), a_group=int(body["a_group"]), rotation=int(body["rotation"]),
                   fmt=str(body.get("fmt", "int")))

    @property
    def name(self) -> str:
        """``W8A8-FP8`` / ``W8A8``-style label of the format."""
        return f"W{self.w_bits}A{self.a_bits}" + ("-FP8" if self.fmt == "fp8_e4m3" else "")


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
    linear_specs: dict[str, LinearSpec] = field(default_factory=dict)  # missing: LinearSpec(w_bits, 0, static)
    # the scheduler config calibration ran with: its training schedule (models.schedule) defines the timestep
    # axis the groups live on; None only in recipes written before ditq recorded it
    scheduler_config: dict[str, Any] | None = None
    # "nearest": consumers round W / w_scale; "gptq": the codes are stored ({linear}.w_codes), see weight_codes
    weight_rounding: str = "nearest"
    # per-group bias correction of the static Linears (g{g}/{lin}.bias_correction): absent in older recipes
    bias_correction: bool = False
    # PixArt models calibrated in memory (the Python API): the caption table calibration ran on, saved as
    # captions.safetensors beside the scales so an export can rebuild the same model (its hash covers the table)
    captions: Any = field(default=None, compare=False, repr=False)
    root: Path | None = field(default=None, compare=False, repr=False)  # the directory it was saved to / loaded from

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

    def weight_codes(self, linear: str, weight: torch.Tensor) -> torch.Tensor:
        """The codes [N, K] (float tensor of integers, or E4M3 values) ``linear`` computes with, given its folded
        float ``weight``: the stored ``{linear}.w_codes`` when calibration wrote them (GPTQ rounding), else
        ``W / w_scale`` (after the Linear's rotation ``W @ R``) rounded to nearest. Every consumer (fake-quant,
        torch-int8, the QDQ export) takes its weights from here."""
        stored = self.tensors.get(f"{linear}.w_codes")
        if stored is not None:
            if tuple(stored.shape) != tuple(weight.shape):
                raise DitqError(f"{linear}.w_codes has shape {list(stored.shape)} but the model's weight is "
                                f"{list(weight.shape)}; re-run `ditq calibrate` on this model")
            return stored.float()
        spec = self.linear_spec(linear)
        return quantize_weight(rotate_weight(weight, spec.rotation), self.w_scale(linear).float(), spec.w_bits,
                               spec.fmt)

    def bias_corrections(self, group_id: int) -> dict[str, torch.Tensor]:
        """Linear name -> the bias correction [N] of group ``group_id`` (empty without bias correction)."""
        if not self.bias_correction:
            return {}
        prefix, suffix = f"g{group_id}/", ".bias_correction"
        return {k[len(prefix):-len(suffix)]: v for k, v in self.tensors.items()
                if k.startswith(prefix) and k.endswith(suffix)}

    def fold(self, state: Mapping[str, torch.Tensor], sites: Sequence[Site], group_id: int, *,
             corrected: bool = True, uncorrected: Collection[str] = ()) -> tuple[dict[str, torch.Tensor], PreAffine]:
        """``state`` with group ``group_id`` folded in: its shifts, the smoothing scales and (``corrected``) its
        bias corrections, except those of the Linears in ``uncorrected`` (``core.fold.fold_state``). Returns the
        folded state and the explicit pre-affines. Every consumer of a recipe (fake-quant, torch-int8, the ONNX
        export) folds through here; without quantizers (``corrected=False``) the fold is exact."""
        corrections = {k: v for k, v in self.bias_corrections(group_id).items() if k not in uncorrected}
        return fold_state(state, sites, {s.name: self.shift(s.name, group_id) for s in sites},
                          {s.name: self.smooth(s.name) for s in sites}, corrections if corrected else None)

    def linear_spec(self, linear: str) -> LinearSpec:
        return self.linear_specs.get(linear) or LinearSpec(w_bits=self.w_bits, a_bits=self.a_bits)

    @property
    def formats(self) -> tuple[str, ...]:
        """The quantizer formats the Linears use (``("int",)``, ``("fp8_e4m3",)``), sorted."""
        return tuple(sorted({self.linear_spec(lin).fmt for s in self.sites for lin in s.linears}))

    @property
    def dynamic_activations(self) -> bool:
        """Whether any Linear quantizes its input at run time (per token: exported in TensorRT's Q/DQ form; per token
        and channel group: float ops, see ``float_quantized_linears``)."""
        return any(self.linear_spec(lin).dynamic for s in self.sites for lin in s.linears)

    @property
    def float_quantized_linears(self) -> tuple[str, ...]:
        """Linears whose input is quantized at run time with scales that vary along the GEMM's reduction axis (per
        token and channel group, Q-DiT): the export spells them as float ops, which TensorRT cannot make INT8.
        Per-token scales (ViDiT-Q) are not among them: they export as constant-scale Q/DQ around a run-time
        rescale of the GEMM's rows (``export.qdq``), TensorRT's explicit-quantization form."""
        return tuple(lin for s in self.sites for lin in s.linears
                     if (spec := self.linear_spec(lin)).dynamic and (spec.act, spec.fmt) != ("dynamic_token", "int"))

    def site_is_static(self, site: SiteSpec) -> bool:
        return any(not self.linear_spec(lin).dynamic for lin in site.linears)

    def group_of(self, timestep: float) -> int:
        return TimestepGroups.of([g.interval for g in self.groups]).group_of(timestep)

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
            "dynamic_activations": self.dynamic_activations,
            "linears": {lin: spec.body() for lin, spec in self.linear_specs.items()},
            "scheduler_config": self.scheduler_config,
            **({"weight_rounding": self.weight_rounding} if self.weight_rounding != "nearest" else {}),
            **({"bias_correction": True} if self.bias_correction else {}),
        }

    # -- persistence -----------------------------------------------------------------------------------------
    def save(self, path: str | Path, *, force: bool = False) -> Path:
        """Write the recipe directory ``path`` under ditq's output rule (``ditq.artifacts.outputs.staging_dir``): staged
        beside it and put in place in one rename; an existing non-empty directory is replaced only with
        ``force`` and only if it is a recipe. Returns ``path``.

        Example::

            recipe = ditq.calibrate(pipe, ditq.W8A8_HTG)
            recipe.save("recipe")
        """
        from ditq.artifacts.outputs import staging_dir

        with staging_dir(Path(path), kind=self.KIND, force=force) as tmp:
            self.write(tmp)
        self.root = Path(path)
        return Path(path)

    def write(self, root: Path) -> None:
        """Write the files into ``root`` as they are (no output rule: callers stage ``root`` themselves)."""
        from safetensors.torch import save_file

        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in self.tensors.items()}, str(root / SCALES))
        write_json(root / RECIPE_JSON, self.body())
        names = [RECIPE_JSON, SCALES]
        if self.captions is not None:
            from ditq.artifacts.captions import CAPTIONS_FILE

            self.captions.save(root / CAPTIONS_FILE)
            names.append(CAPTIONS_FILE)
        write_manifest(root, self.KIND, {"method": self.method, "num_groups": self.num_groups,
                                         "model_sha256": self.model_sha256,
                                         "dynamic_activations": self.dynamic_activations,
                                         # so the manifest hash (an ONNX set's parent_sha256) covers the scales
                                         "files": {n: sha256_file(root / n) for n in names}})

    @classmethod
    def load(cls, root: Path) -> Recipe:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        root = Path(root)
        read_manifest(root, cls.KIND)
        for name in (RECIPE_JSON, SCALES):  # safetensors reports a missing file without its name
            if not (root / name).is_file():
                raise DitqError(f"recipe {root} is incomplete: {name} is missing; re-run `ditq calibrate`")
        try:
            body = json.loads((root / RECIPE_JSON).read_text())
            tensors = load_file(str(root / SCALES))
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
                linear_specs={lin: LinearSpec.from_body(spec) for lin, spec in body.get("linears", {}).items()},
                scheduler_config=_scheduler_field(body.get("scheduler_config")),
                weight_rounding=str(body.get("weight_rounding", "nearest")),
                bias_correction=bool(body.get("bias_correction", False)),
            )
        except (KeyError, TypeError, ValueError, IndexError) as err:
            raise DitqError(f"{root / RECIPE_JSON} is malformed (bad or missing field {err}); "
                            "re-run calibrate") from err
        from ditq.artifacts.captions import CAPTIONS_FILE, load_caption_table

        if (root / CAPTIONS_FILE).is_file():
            recipe.captions = load_caption_table(root / CAPTIONS_FILE)
        recipe.root = root
        recipe.check()
        return recipe

    def check_model(self, model: Any, root: Path | None = None) -> None:
        """Refuse a loaded model that is not the one this recipe was calibrated on (its sha256 differs)."""
        if self.model_sha256 != model.sha256:
            where = f" in {root}" if root is not None else ""
            raise DitqError(f"the model {model.source} (sha256 {model.sha256[:12]}) is not the one the recipe{where} "
                            f"was calibrated on ({self.model_sha256[:12]}); re-run `ditq calibrate` on this model")

    def check(self) -> None:
        """Internal consistency: groups tile the timestep axis and every tensor the sites need is present."""
        if [g.group_id for g in self.groups] != list(range(len(self.groups))) or not self.groups:
            raise DitqError("recipe groups must be numbered 0..G-1; re-run `ditq calibrate`")
        edges = sorted(g.interval for g in self.groups)
        ok = edges[0][0] == 0 and edges[-1][1] == self.num_train_timesteps - 1 and all(
            a[1] + 1 == b[0] for a, b in zip(edges, edges[1:]))
        if not ok:
            raise DitqError(f"recipe group intervals {edges} do not tile [0, {self.num_train_timesteps - 1}]")
        if self.scheduler_config is not None and int(self.scheduler_config.get("num_train_timesteps", -1)) != \
                self.num_train_timesteps:
            raise DitqError(f"recipe.json's scheduler_config has num_train_timesteps "
                            f"{self.scheduler_config.get('num_train_timesteps')} but its groups tile "
                            f"[0, {self.num_train_timesteps - 1}]; re-run `ditq calibrate`")
        need = [f"{s.name}.smooth" for s in self.sites] + [f"{lin}.w_scale" for s in self.sites for lin in s.linears]
        need += [f"g{g.group_id}/{s.name}.shift" for g in self.groups for s in self.sites]
        need += [f"g{g.group_id}/{s.name}.act_scale" for g in self.groups for s in self.sites if self.site_is_static(s)]
        if self.weight_rounding not in WEIGHT_ROUNDINGS:
            raise DitqError(f"recipe weight_rounding {self.weight_rounding!r} is not one of "
                            f"{', '.join(WEIGHT_ROUNDINGS)}; re-run `ditq calibrate`")
        codes = [f"{lin}.w_codes" for s in self.sites for lin in s.linears]
        if self.weight_rounding == "nearest" and (extra := [k for k in codes if k in self.tensors]):
            raise DitqError(f"{SCALES} holds weight codes ({extra[0]}) but recipe.json says weight_rounding "
                            "'nearest'; re-run `ditq calibrate`")
        if self.weight_rounding != "nearest":
            need += codes
        corrections = [f"g{g.group_id}/{lin}.bias_correction" for g in self.groups for s in self.sites
                       for lin in s.linears if not self.linear_spec(lin).dynamic]
        if not self.bias_correction and (extra := [k for k in self.tensors if k.endswith(".bias_correction")]):
            raise DitqError(f"{SCALES} holds bias corrections ({extra[0]}) but recipe.json does not say "
                            "bias_correction; re-run `ditq calibrate`")
        if self.bias_correction:
            need += corrections
        missing = [k for k in need if k not in self.tensors]
        if missing:
            raise DitqError(f"{SCALES} lacks {len(missing)} tensors the recipe names (first: {missing[0]}); "
                            "re-run `ditq calibrate`")
        linears = {lin for s in self.sites for lin in s.linears}
        if unknown := sorted(set(self.linear_specs) - linears):
            raise DitqError(f"recipe.json gives a quantizer spec for {unknown[0]}, which no site reads; "
                            "re-run `ditq calibrate`")
        for s in self.sites:
            static_bits = {(self.linear_spec(lin).a_bits, self.linear_spec(lin).fmt) for lin in s.linears
                           if not self.linear_spec(lin).dynamic}
            if len(static_bits) > 1:
                raise DitqError(f"site {s.name} shares one static activation scale but its Linears ask for "
                                f"{sorted(static_bits)} (bits, format); re-run `ditq calibrate`")
            for lin in s.linears:
                spec, scale = self.linear_spec(lin), self.tensors[f"{lin}.w_scale"]
                if (scale.dim() == 2) != (spec.w_block > 0) or (spec.w_block and scale.shape[1] * spec.w_block
                                                                  != self._in_features(s)):
                    raise DitqError(f"{lin}.w_scale has shape {list(scale.shape)}, which does not fit a weight "
                                    f"block of {spec.w_block}; re-run `ditq calibrate`")
                stored = self.tensors.get(f"{lin}.w_codes")
                if stored is not None and (tuple(stored.shape) != (scale.shape[0], self._in_features(s))
                                           or (spec.fmt == "int" and bool(_out_of_range(stored, spec.w_bits)))):
                    raise DitqError(f"{lin}.w_codes (shape {list(stored.shape)}) are not {spec.w_bits}-bit codes of "
                                    f"a [{scale.shape[0]}, {self._in_features(s)}] weight; re-run `ditq calibrate`")
                for g in self.groups:
                    corr = self.tensors.get(f"g{g.group_id}/{lin}.bias_correction")
                    if corr is not None and tuple(corr.shape) != (scale.shape[0],):
                        raise DitqError(f"g{g.group_id}/{lin}.bias_correction has shape {list(corr.shape)}, not "
                                        f"[{scale.shape[0]}] (one per output); re-run `ditq calibrate`")

    def _in_features(self, site: SiteSpec) -> int:
        return int(self.tensors[f"{site.name}.smooth"].numel())


def _out_of_range(codes: torch.Tensor, bits: int) -> bool:
    lo, hi = qrange(bits)
    return bool(codes.numel()) and (int(codes.min()) < lo or int(codes.max()) > hi)


def _scheduler_field(value: Any) -> dict[str, Any] | None:
    if value is not None and not isinstance(value, dict):
        raise TypeError("scheduler_config")
    return value
