"""``ditq triton``: a Triton Inference Server model repository for an ONNX set or an engine set.

Layout (``NAME`` defaults to ``transformer``)::

    REPO/manifest.json                       kind ditq.triton: the source set, its groups and the models
    REPO/NAME_group_{g}/config.pbtxt         platform onnxruntime_onnx (ONNX set) or tensorrt_plan (engine set)
    REPO/NAME_group_{g}/1/model.onnx         + 1/weights.bin (ONNX set): one file on disk, hard-linked
    REPO/NAME_group_{g}/1/model.plan         (engine set: each plan holds its own weights)
    REPO/NAME/config.pbtxt                   backend python: the transformer's signature
    REPO/NAME/1/model.py, 1/route.py         the router (BLS to the group models) and ditq's row router

Shared weights: ONNX Runtime resolves external data relative to the graph, and refuses locations outside its
directory, so each group model's ``1/weights.bin`` is a **hard link** to one file (kept once on disk; a copy of the
repository to object storage, where links do not exist, holds one file per group and still loads). Where the
file system refuses a hard link the file is copied, with a warning.

Batch-only tensors (``timestep``, ``class_labels``: shape ``[batch]`` in the graphs) are declared with
``dims: [1]`` and ``reshape: { shape: [] }``, Triton's way of serving a ``[batch]`` tensor with batching on:
clients send them as ``[batch, 1]``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ditq.artifacts import MANIFEST, manifest_kind, write_manifest
from ditq.errors import DitqError

log = logging.getLogger(__name__)

KIND = "ditq.triton"
ROUTER_FILES = ("model.py", "route.py")
_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "int64": "TYPE_INT64", "int32": "TYPE_INT32"}


@dataclass(frozen=True)
class TensorSpec:
    """One input or output as Triton declares it: ``dims`` without the batch dimension (-1: dynamic)."""

    name: str
    data_type: str  # TYPE_FP32, ...
    dims: tuple[int, ...]
    batch_only: bool = False  # [batch] in the graph: dims [1], reshape []

    def pbtxt(self) -> str:
        dims = (1,) if self.batch_only else self.dims
        reshape = " reshape: { shape: [ ] }" if self.batch_only else ""
        return (f"  {{ name: \"{self.name}\" data_type: {self.data_type} dims: [ {', '.join(map(str, dims))} ]"
                f"{reshape} }}")


@dataclass(frozen=True)
class SetInfo:
    """What a model repository needs from an ONNX or engine set."""

    kind: str  # "onnx" | "engines"
    root: Path
    intervals: list[tuple[int, int]]
    files: list[Path]  # per group: the graph or plan
    inputs: list[TensorSpec]  # the group graphs' inputs (their float type)
    outputs: list[TensorSpec]
    max_batch_size: int | None  # None: the set does not bound it (ONNX)
    preferred_batch_size: int | None
    model: dict[str, Any]
    scheduler_config: dict[str, Any]
    manifest_sha256: str

    @property
    def platform(self) -> str:
        return "onnxruntime_onnx" if self.kind == "onnx" else "tensorrt_plan"

    @property
    def instance_kind(self) -> str:
        return "KIND_CPU" if self.kind == "onnx" else "KIND_GPU"


def read_set(path: Path) -> SetInfo:
    """An ONNX set (``ditq export``) or an engine set (``ditq build``), read through its artifact loader."""
    from ditq.artifacts import manifest_sha256
    from ditq.artifacts.engines import EngineArtifact
    from ditq.artifacts.onnx import OnnxArtifact

    path = Path(path)
    kind = manifest_kind(path)
    if kind == OnnxArtifact.KIND:
        art = OnnxArtifact.load(path)
        io = _read_io(art.root)
        inputs = [_spec(n, v) for n, v in io["inputs"].items()]
        outputs = [_spec(n, v) for n, v in io["outputs"].items()]
        return SetInfo("onnx", art.root, art.intervals, [art.path(g.group_id) for g in art.groups], inputs,
                       outputs, None, None, art.model, art.scheduler_config, manifest_sha256(art.root))
    if kind == EngineArtifact.KIND:
        eng = EngineArtifact.load(path, check_runtime=False, check_parent=False)  # served elsewhere: no local GPU
        float_type = "TYPE_FP16" if eng.precision == "fp16" else "TYPE_FP32"
        inputs = []
        for name, shapes in eng.profile.items():
            dims = tuple(lo if lo == hi else -1 for lo, hi in zip(shapes["min"][1:], shapes["max"][1:]))
            dtype = "TYPE_INT64" if name == "class_labels" else float_type
            inputs.append(TensorSpec(name, dtype, dims, batch_only=not dims))
        x = next((s for s in inputs if s.name == "hidden_states"), None)
        if x is None or not any(s.name == "timestep" for s in inputs):
            raise DitqError(f"the engine set {path} has no hidden_states/timestep profile; {eng.REDO}")
        lo, hi = eng.batch_range
        opt = next(iter(eng.profile.values()))["opt"][0]
        return SetInfo("engines", eng.root, eng.intervals, [eng.path(g.group_id) for g in eng.groups], inputs,
                       [TensorSpec("sample", float_type, x.dims)], hi, opt, eng.model, eng.scheduler_config,
                       manifest_sha256(eng.root))
    raise DitqError(f"{path} is not an ONNX set (`ditq export`) or an engine set (`ditq build`)"
                    f"{f' but a {kind}' if kind else ''}; pass the directory one of them wrote")


def _read_io(root: Path) -> dict[str, Any]:
    try:
        return json.loads((root / "io.json").read_text())
    except (OSError, ValueError) as err:
        raise DitqError(f"{root}/io.json is missing or unreadable; re-run `ditq export`") from err


def _spec(name: str, entry: dict[str, Any]) -> TensorSpec:
    dtype = _TYPES.get(entry["dtype"])
    if dtype is None:
        raise DitqError(f"io.json gives {name} the type {entry['dtype']}, which ditq triton does not map; "
                        "re-run `ditq export`")
    dims = tuple(d if isinstance(d, int) else -1 for d in entry["shape"][1:])
    return TensorSpec(name, dtype, dims, batch_only=not dims)


def client_inputs(info: SetInfo) -> list[TensorSpec]:
    """The router's inputs: the transformer's signature, float tensors in FP32 whatever the graphs' type."""
    return [TensorSpec(s.name, "TYPE_FP32" if s.data_type == "TYPE_FP16" else s.data_type, s.dims, s.batch_only)
            for s in info.inputs]


def group_config(info: SetInfo, name: str, max_batch_size: int, queue_delay_us: int, instances: int) -> str:
    file = "model.onnx" if info.kind == "onnx" else "model.plan"
    return _config(name, f'platform: "{info.platform}"', max_batch_size, info.inputs, info.outputs,
                   queue_delay_us, info.instance_kind, instances, info.preferred_batch_size,
                   extra=f'default_model_filename: "{file}"\n')


def router_config(info: SetInfo, name: str, group_names: list[str], max_batch_size: int, queue_delay_us: int,
                  instances: int, stats_path: str | None = None) -> str:
    """``stats_path``: a file where the router keeps its batch counters (``ditq bench serve``)."""
    params = {
        "intervals": json.dumps([list(iv) for iv in info.intervals]),
        "group_models": json.dumps(group_names),
        "group_inputs": json.dumps({s.name: s.data_type for s in info.inputs}),
        "num_classes": str(info.model.get("num_classes") or 0),
        **({"stats_path": stats_path} if stats_path else {}),
    }
    text = "\n".join(f'parameters: {{ key: "{k}" value: {{ string_value: {json.dumps(v)} }} }}'
                     for k, v in params.items())
    outputs = [TensorSpec(s.name, "TYPE_FP32", s.dims, s.batch_only) for s in info.outputs]
    return _config(name, 'backend: "python"', max_batch_size, client_inputs(info), outputs, queue_delay_us,
                   "KIND_CPU", instances, None, extra=text + "\n")


def _config(name: str, runtime: str, max_batch_size: int, inputs: list[TensorSpec], outputs: list[TensorSpec],
            queue_delay_us: int, instance_kind: str, instances: int, preferred: int | None, extra: str = "") -> str:
    pref = f" preferred_batch_size: [ {preferred} ]" if preferred else ""
    return (f'name: "{name}"\n{runtime}\nmax_batch_size: {max_batch_size}\n'
            "input [\n" + ",\n".join(s.pbtxt() for s in inputs) + "\n]\n"
            "output [\n" + ",\n".join(s.pbtxt() for s in outputs) + "\n]\n"
            f"dynamic_batching {{{pref} max_queue_delay_microseconds: {queue_delay_us} }}\n"
            f"instance_group [ {{ kind: {instance_kind} count: {instances} }} ]\n" + extra)


def write_repository(src: Path, out: Path, *, name: str = "transformer", max_batch_size: int | None = None,
                     queue_delay_us: int = 2000, instances: int = 1, force: bool = False) -> Path:
    """Write the model repository for the set at ``src`` to ``out`` (the output rule: ``staging_dir``)."""
    from ditq.artifacts.outputs import staging_dir

    info = read_set(src)
    if max_batch_size is None:
        max_batch_size = info.max_batch_size or 16
    if max_batch_size < 1 or (info.max_batch_size is not None and max_batch_size > info.max_batch_size):
        bound = f"1..{info.max_batch_size} (the engines' profile)" if info.max_batch_size else ">= 1"
        raise DitqError(f"--max-batch-size {max_batch_size} is out of range for {src}: pass {bound}")
    if instances < 1:
        raise DitqError(f"--instances must be >= 1, got {instances}")
    if not name.replace("_", "").replace("-", "").isalnum():
        raise DitqError(f"--name {name!r} must be letters, digits, '-' and '_' (it names Triton models)")
    groups = [f"{name}_group_{g}" for g in range(len(info.intervals))]
    with staging_dir(Path(out), kind=KIND, force=force, inputs=[info.root]) as tmp:
        shared: Path | None = None
        for g, model_name in enumerate(groups):
            vdir = tmp / model_name / "1"
            vdir.mkdir(parents=True)
            (tmp / model_name / "config.pbtxt").write_text(
                group_config(info, model_name, max_batch_size, queue_delay_us, instances))
            if info.kind == "onnx":
                _link_or_copy(info.files[g], vdir / "model.onnx")
                data = vdir / "weights.bin"
                _link_or_copy(shared or info.root / "weights.bin", data)
                shared = shared or data
            else:
                _link_or_copy(info.files[g], vdir / "model.plan")
        rdir = tmp / name / "1"
        rdir.mkdir(parents=True)
        (tmp / name / "config.pbtxt").write_text(router_config(info, name, groups, max_batch_size, queue_delay_us,
                                                               instances))
        for file, text in router_files().items():
            (rdir / file).write_text(text)
        write_manifest(tmp, KIND, {
            "source": {"kind": info.kind, "dir": os.path.relpath(info.root.resolve(), Path(out).resolve().parent),
                       "sha256": info.manifest_sha256},
            "router": name, "group_models": groups, "intervals": [list(iv) for iv in info.intervals],
            "platform": info.platform, "max_batch_size": max_batch_size, "model": info.model,
            "scheduler_config": info.scheduler_config,
            "shared_weights": "hard link" if info.kind == "onnx" else None,
        }, parent_sha256=info.manifest_sha256)
    log.info("wrote the Triton model repository %s (%d group models + router %s)", out, len(groups), name)
    return Path(out)


def router_files() -> dict[str, str]:
    """The router's version directory: the Python-backend model and the row router it imports."""
    here = Path(__file__).parent
    return {"model.py": (here / "router_model.py").read_text(),
            "route.py": (here.parent / "runtime" / "route.py").read_text()}


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError as err:
        log.warning("cannot hard-link %s (%s); copying it", src, err.strerror or err)
        shutil.copy2(src, dst)


def parse_config(text: str) -> Any:
    """``config.pbtxt`` parsed with Triton's model-config schema (``tritonclient.grpc.model_config_pb2``)."""
    try:
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2
    except ImportError as err:
        raise DitqError(f"checking a config.pbtxt needs tritonclient ({err}); "
                        "pip install 'tritonclient[grpc]'") from err
    return text_format.Parse(text, model_config_pb2.ModelConfig())


def is_repository(path: Path) -> bool:
    return (Path(path) / MANIFEST).is_file() and manifest_kind(path) == KIND
