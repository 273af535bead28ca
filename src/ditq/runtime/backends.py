"""Backends behind one interface: ``backend(x, timestep, cond) -> eps``, the group picked by timestep.

- ``torch``: the folded model with fake quantization (the numerical reference of the exported graphs);
- ``onnxruntime``: the exported graphs, one session per group, all created up front.
(TensorRT engines plug in the same way; see ``ditq.engines``.)
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ditq.artifacts.recipe import Recipe
from ditq.core.cond import Cond
from ditq.core.fold import PreAffine, fold_state
from ditq.core.groups import TimestepGroups
from ditq.core.qlinear import QLinear
from ditq.core.sites import Denoiser, Site
from ditq.errors import DitqError
from ditq.models.conditioning import conditioning_from_info
from ditq.models.loading import LoadedModel, make_denoiser, quant_sites
from ditq.models.schedule import SchedulerSpec, check_schedule, scheduler_config_of

Fn = Callable[[torch.Tensor, torch.Tensor, Cond], torch.Tensor]


@dataclass
class GroupedBackend:
    """Dispatch each call to the callable of the group whose timestep interval holds the call's timestep."""

    name: str
    intervals: Sequence[tuple[int, int]]
    fns: Sequence[Fn]
    calls: list[int] = field(default_factory=list)
    num_classes: int | None = None  # class-conditioned models: labels 0..num_classes-1, num_classes = null label

    def __post_init__(self) -> None:
        self.calls = [0] * len(self.fns)
        self.groups = TimestepGroups.of(self.intervals)

    def group_of(self, timestep: float) -> int:
        return self.groups.group_of(timestep)

    def check_cond(self, cond: Cond) -> None:
        """Refuse class labels the model has no embedding for (ONNX Runtime and TensorRT would fail deep inside
        a Gather, the torch backend inside an Embedding)."""
        labels = cond.get("class_labels")
        if labels is None or self.num_classes is None or labels.numel() == 0:
            return
        bad = labels[(labels < 0) | (labels > self.num_classes)]
        if bad.numel():
            raise DitqError(f"class label {int(bad[0])} is out of range for this {self.num_classes}-class model: "
                            f"labels lie in [0, {self.num_classes - 1}] and {self.num_classes} is the "
                            "unconditional (null) label")

    def __call__(self, x: torch.Tensor, timestep: torch.Tensor, cond: Cond) -> torch.Tensor:
        g = self.group_of(float(timestep[0]))
        self.check_cond(cond)
        self.calls[g] += 1
        return self.fns[g](x, timestep, cond)


def folded_transformer(model: LoadedModel, recipe: Recipe, group_id: int) -> tuple[nn.Module, PreAffine, list[Site]]:
    """A copy of the transformer with group ``group_id``'s shifts and the recipe's smoothing folded in (exact),
    the explicit pre-affines still to apply, and the quantized sites."""
    sites = quant_sites(model.transformer)
    folded, pre = fold_state(model.transformer.state_dict(), sites,
                             {s.name: recipe.shift(s.name, group_id) for s in sites},
                             {s.name: recipe.smooth(s.name) for s in sites})
    transformer = copy.deepcopy(model.transformer)
    transformer.load_state_dict(folded)
    return transformer, pre, sites


def group_denoiser(model: LoadedModel, recipe: Recipe, group_id: int, *, quantize: bool = True) -> Denoiser:
    """The model with group ``group_id``'s shifts and scales folded in, fake-quantized unless ``quantize=False``.

    Each Linear follows its recipe spec (weight bits and blocks, static or dynamic activations, rotation); with
    ``quantize=False`` only the exact re-parameterisations remain (folding and rotations).
    """
    transformer, pre, sites = folded_transformer(model, recipe, group_id)
    modules = dict(transformer.named_modules())
    for site in sites:
        for lin in site.linears:
            parent, _, attr = lin.rpartition(".")
            spec = recipe.linear_spec(lin)
            q = QLinear(
                modules[lin],  # type: ignore[arg-type]
                w_scale=recipe.w_scale(lin) if quantize else None,
                act_scale=float(recipe.act_scale(site.name, group_id)) if quantize and not spec.dynamic else None,
                pre=pre.get(site.name), w_bits=spec.w_bits, a_bits=spec.a_bits,
                dynamic_group=spec.a_group if quantize and spec.dynamic else None, rotation=spec.rotation,
            )
            setattr(modules[parent], attr, q)
    return make_denoiser(transformer)


def torch_backend(model: LoadedModel, recipe: Recipe | None) -> GroupedBackend:
    """Per-group fake-quantized models (built once); ``recipe=None`` gives the unquantized model."""
    classes = model.num_classes if model.kind == "dit" else None
    if recipe is None:
        den = model.denoiser()
        return GroupedBackend("torch-fp", [(0, model.num_train_timesteps - 1)], [torch.no_grad()(den.predict)],
                              num_classes=classes)
    if recipe.model_sha256 != model.sha256:
        raise DitqError("the recipe was calibrated on another model (sha256 differs); re-run `ditq calibrate`")
    check_schedule(recipe.scheduler_config, model.scheduler_config, recorded_as="the recipe",
                   actual_as=f"the model's scheduler ({model.scheduler_source or model.source})")
    fns = [torch.no_grad()(group_denoiser(model, recipe, g.group_id).predict) for g in recipe.groups]
    return GroupedBackend(f"torch-{recipe.method}", [g.interval for g in recipe.groups], fns, num_classes=classes)


def ort_session(path: Path, threads: int | None = None, *, fuse: bool = True, spinning: bool | None = None,
                optimized_path: Path | None = None, profile_prefix: str | None = None) -> Any:
    """A CPU session; ``fuse`` lets ONNX Runtime turn each DQ->MatMul into an integer kernel.

    ``fuse=False`` keeps the Q/DQ arithmetic exact (float ops), the numerics TensorRT and the torch reference
    share. On x86 CPUs without VNNI, the fused u8s8 kernels can saturate int16 partial sums with full-range
    INT8 weights, which costs accuracy (measured: ~2% relative output error on a tiny DiT; 7-bit weights remove
    it), so quality comparisons use ``fuse=False`` and speed measurements ``fuse=True``.
    What a benchmark adds: ``spinning`` (intra-op thread spinning; None: ONNX Runtime's default, on),
    ``optimized_path`` (save the optimized graph there, weights in a side file), ``profile_prefix`` (profiling).
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if fuse
                                     else ort.GraphOptimizationLevel.ORT_ENABLE_BASIC)
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    if spinning is not None:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    if optimized_path is not None:
        opts.optimized_model_filepath = str(optimized_path)
        # keep weights out of the saved graph: large models would pass protobuf's 2 GB limit
        opts.add_session_config_entry("session.optimized_model_external_initializers_file_name",
                                      Path(optimized_path).stem + ".bin")
        opts.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    if profile_prefix is not None:
        opts.enable_profiling = True
        opts.profile_file_prefix = profile_prefix
    try:
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"],
                                    disabled_optimizers=["CommonSubexpressionElimination"])
    except Exception as err:  # onnxruntime raises its own non-DitqError types for unreadable graphs
        raise DitqError(f"onnxruntime cannot load {path}: {str(err).splitlines()[0]}") from err


def onnxruntime_backend(artifact: Any, *, fp: bool = False, threads: int | None = None,
                        fuse: bool = True) -> GroupedBackend:
    """Sessions for every group (or the FP reference) of an OnnxArtifact, created once."""
    from ditq.artifacts.onnx import OnnxArtifact

    assert isinstance(artifact, OnnxArtifact)
    paths = [artifact.path(None)] if fp else [artifact.path(g.group_id) for g in artifact.groups]
    intervals = [(0, artifact.model["num_train_timesteps"] - 1)] if fp else artifact.intervals
    np_float = np.float16 if artifact.precision == "fp16" else np.float32

    def make(sess: Any) -> Fn:
        def run(x: torch.Tensor, t: torch.Tensor, cond: Cond) -> torch.Tensor:
            feeds = onnx_feeds(x, t, cond, np_float)
            return torch.from_numpy(sess.run(None, feeds)[0].astype(np.float32))

        return run

    name = "onnxruntime-fp" if fp else "onnxruntime" if fuse else "onnxruntime-exact"
    return GroupedBackend(name, intervals, [make(ort_session(p, threads, fuse=fuse)) for p in paths])


def onnx_feeds(x: torch.Tensor, t: torch.Tensor, cond: Cond, np_float: Any = np.float32) -> dict[str, np.ndarray]:
    """The graph inputs: float tensors in the graph's float type, integer ones (class labels) as int64."""
    feeds = {"hidden_states": x, "timestep": t, **cond}
    return {k: v.detach().cpu().numpy().astype(np.int64 if not v.is_floating_point() else np_float)
            for k, v in feeds.items()}


def open_backend(path: Path, kind: str, *, fp: bool = False, threads: int | None = None, fuse: bool | None = None,
                 scheduler: SchedulerSpec | None = None) -> tuple[GroupedBackend, dict[str, Any]]:
    """A backend from an artifact directory, and what sampling needs to know (shapes, classes, scheduler).

    ``onnxruntime`` reads an ONNX directory; ``torch`` reads a recipe directory, or the recipe an ONNX
    directory was exported from. ``fuse``: ONNX Runtime's fused integer kernels (True) or exact Q/DQ (False);
    None picks fused only on a CPU with VNNI (``ditq.runtime.cpu``), where they are exact. ``scheduler`` (a
    ``scheduler_config.json`` path, a config or a scheduler) names the scheduler to sample with; its training
    schedule must be the one the artifact was calibrated for.
    """
    backend, info = _open_backend(Path(path), kind, fp=fp, threads=threads, fuse=fuse, scheduler=scheduler)
    conditioning = info["conditioning"]
    backend.num_classes = conditioning.num if conditioning.kind == "class" else None
    if scheduler is not None and kind != "torch":  # torch: load_model checked it against the recipe
        named = scheduler_config_of(scheduler)
        check_schedule(info.get("scheduler_config"), named, recorded_as=str(path),
                       actual_as=f"the scheduler {scheduler if isinstance(scheduler, (str, Path)) else 'passed in'}")
        info = {**info, "scheduler_config": named}
    return backend, info


def _open_backend(path: Path, kind: str, *, fp: bool, threads: int | None, fuse: bool | None,
                  scheduler: SchedulerSpec | None) -> tuple[GroupedBackend, dict[str, Any]]:
    from ditq.artifacts.onnx import OnnxArtifact
    from ditq.models.loading import load_model

    kind_found = read_manifest_kind(path)
    if kind == "onnxruntime":
        if kind_found != OnnxArtifact.KIND:
            raise DitqError(f"--backend onnxruntime needs an ONNX directory from `ditq export`, got a {kind_found}")
        art = OnnxArtifact.load(path)
        if fuse is None:
            from ditq.runtime.cpu import use_fused_qdq

            fuse = use_fused_qdq("auto")
        info = {**art.model, "scheduler_config": art.scheduler_config,
                "conditioning": conditioning_from_info(art.model, art.root)}
        return onnxruntime_backend(art, fp=fp, threads=threads, fuse=fuse), info
    if kind == "tensorrt":  # an engine directory from `ditq build`; tensorrt is imported only here
        from ditq.runtime.tensorrt_backend import open_tensorrt

        backend, info = open_tensorrt(path, fp=fp)
        return backend, {**info, "conditioning": conditioning_from_info(info, path)}
    if kind != "torch":
        raise DitqError(f"unknown backend {kind!r}; choose onnxruntime or torch")
    if kind_found == OnnxArtifact.KIND:  # its recipe, refused if it changed since the export
        recipe_dir = OnnxArtifact.load(path, verify=False).check_parent()
        if recipe_dir is None:
            raise DitqError(f"the recipe {path} was exported from is not found; pass the recipe directory instead")
        path = recipe_dir
    recipe = Recipe.load(path)
    model = load_model(recipe.model_source, scheduler=scheduler, expected_scheduler=recipe.scheduler_config,
                       expected_as=f"the recipe {path}")
    recipe.check_model(model, path)
    info = {"conditioning": model.conditioning, "sample_shape": list(model.sample_shape),
            "scheduler_config": model.scheduler_config, "kind": model.kind,
            "config": {k: v for k, v in dict(model.config).items() if not k.startswith("_")}}
    return torch_backend(model, None if fp else recipe), info


def read_manifest_kind(path: Path) -> str:
    """The ``kind`` an artifact directory declares (validated later by the artifact's own loader)."""
    import json

    from ditq.artifacts import MANIFEST

    try:
        kind = json.loads((Path(path) / MANIFEST).read_text()).get("kind")
    except (OSError, ValueError, AttributeError) as err:
        raise DitqError(f"{path} is not an artifact directory written by ditq (no readable manifest.json)") from err
    if not isinstance(kind, str):
        raise DitqError(f"{path}/manifest.json has no kind; re-create the artifact")
    return kind
