"""``build_engines(onnx, out, BuildConfig) -> EngineArtifact``: one TensorRT engine per timestep group.

Written to TensorRT 10.x / 11.x's Python API through ``ditq._deps.trt`` (tensorrt is imported on first use, never at
import):
- a strongly typed network (``NetworkDefinitionCreationFlag.STRONGLY_TYPED`` on 10.x; the default, and only,
  mode on 11.x), so precision comes from the graph: INT8 where Q/DQ says so, the graph's float type elsewhere;
- ``OnnxParser.parse_from_file`` (external weights resolve next to the graph); every parser error is reported;
- one optimisation profile for the batch on every input, a workspace limit, ``builder_optimization_level``;
- ONE timing cache shared by all groups (the graphs differ only in biases and scales, so later groups mostly hit
  the cache), loaded from and saved to ``timing.cache``.
Everything is written to a staging directory and moved into place only when every group has built.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ditq._deps import require_gpu, require_tensorrt, trt, trt_logger, trt_major
from ditq.artifacts import manifest_sha256, sha256_file
from ditq.artifacts.captions import CAPTIONS_FILE
from ditq.artifacts.engines import TIMING_CACHE, EngineArtifact, EngineGroup
from ditq.artifacts.onnx import OnnxArtifact
from ditq.artifacts.outputs import check_output, staging_dir
from ditq.errors import DitqError

log = logging.getLogger(__name__)

QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})
DYNAMIC_QUANT_OPS = frozenset({"DynamicQuantizeLinear", "MatMulInteger", "DynamicQuantizeMatMul"})
MAX_OPT_LEVEL = 5


@dataclass(frozen=True)
class BuildConfig:
    min_batch: int = 1
    opt_batch: int = 8  # CFG doubles the batch: 4 prompts -> 8
    max_batch: int = 32
    workspace_gib: float = 4.0
    opt_level: int = 3  # TensorRT's default builder_optimization_level
    timing_cache: Path | None = None  # also load from / save to this file (shared between engine sets)
    force: bool = False

    def __post_init__(self) -> None:
        if not 1 <= self.min_batch <= self.opt_batch <= self.max_batch:
            raise DitqError(f"batch sizes must satisfy 1 <= --min-batch <= --opt-batch <= --max-batch, got "
                            f"{self.min_batch}, {self.opt_batch}, {self.max_batch}")
        if not self.workspace_gib > 0:
            raise DitqError(f"--workspace-gib must be positive, got {self.workspace_gib}")
        if not 0 <= self.opt_level <= MAX_OPT_LEVEL:
            raise DitqError(f"--opt-level must be in [0, {MAX_OPT_LEVEL}], got {self.opt_level}")

    @property
    def workspace_bytes(self) -> int:
        return int(self.workspace_gib * (1 << 30))


def weight_bytes(onnx_file: Path) -> int:
    """Bytes of a graph's initializers at their stored types (INT8/INT4 weights, float biases, scales): what one
    engine built from it embeds, give or take TensorRT's own layout. Read from the tensor headers only."""
    import numpy as np
    import onnx as onnx_lib

    total = 0.0
    for init in onnx_lib.load(str(onnx_file), load_external_data=False).graph.initializer:
        numel = int(np.prod(init.dims, dtype=np.int64)) if init.dims else 1
        if init.data_type in (onnx_lib.TensorProto.INT4, onnx_lib.TensorProto.UINT4):
            total += numel / 2
        else:
            total += numel * np.dtype(onnx_lib.helper.tensor_dtype_to_np_dtype(init.data_type)).itemsize
    return int(total)


def human_bytes(n: float) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


def memory_report(art: EngineArtifact, onnx: OnnxArtifact) -> str:
    """One line for ``ditq build``: G plans, each with its own copy of the weights, all resident at run time."""
    plans = sum(art.path(g.group_id).stat().st_size for g in art.groups)
    weights = max(weight_bytes(onnx.path(g.group_id)) for g in onnx.groups)
    g = len(art.groups)
    return (f"GPU memory: the {g} engines are all loaded at once and each plan embeds its own weights: plans "
            f"{human_bytes(plans)} in total, {human_bytes(weights)} of weights per engine (x{g} = "
            f"{human_bytes(g * weights)}), plus one shared activation buffer")


def check_deployable(onnx: OnnxArtifact, trt_version: str | None = None) -> None:
    """Refuse, in one line, an ONNX set that TensorRT ``trt_version`` (None: the newest ditq knows, the static check
    without TensorRT) cannot build as wanted: activations quantized by float ops at run time (per token and channel
    group); a quantized recipe whose graphs carry no Q/DQ; an FP32 set (strongly typed, it gives INT8 GEMMs with
    FP32 everywhere else, and TensorRT 11 has no FP16 flag to change that); W4A8 (no INT4 x INT8 GEMM); anything
    else that version's lint rules refuse (INT8 blocks). Per-token activations (constant-scale Q/DQ around a
    run-time row rescale) pass."""
    import onnx as onnx_lib

    from ditq.artifacts.lint import float_quantized_activations, lint_onnx_set, tensorrt_target

    target = tensorrt_target(trt_version)
    method = onnx.recipe.get("method")
    if float_quantized_activations(onnx.recipe):
        raise DitqError(f"the ONNX set {onnx.root} quantizes activations dynamically with float ops (method "
                        f"{method!r}); TensorRT INT8 needs constant Q/DQ scales: export a static method (htg, "
                        "minmax) or a per-token one (viditq) with this ditq, or run this set with --backend "
                        "onnxruntime")
    quantized = min(int(onnx.recipe.get("w_bits", 32)), int(onnx.recipe.get("a_bits", 32))) <= 8
    for group in onnx.groups:
        ops = {n.op_type for n in onnx_lib.load(str(onnx.path(group.group_id)), load_external_data=False).graph.node}
        if dynamic := sorted(ops & DYNAMIC_QUANT_OPS):
            raise DitqError(f"{group.file} quantizes activations at run time ({', '.join(dynamic)}); TensorRT "
                            "INT8 needs static activation scales: export a static method (htg, minmax)")
        if quantized and not ops & QDQ_OPS:
            raise DitqError(f"{group.file} has no QuantizeLinear/DequantizeLinear although the recipe is "
                            f"W{onnx.recipe.get('w_bits')}A{onnx.recipe.get('a_bits')}; TensorRT INT8 needs "
                            "explicit Q/DQ with static scales: re-run `ditq export`")
    if onnx.precision == "fp32":
        raise DitqError(f"the ONNX set {onnx.root} is FP32: a strongly typed TensorRT network keeps FP32 wherever the "
                        "graph is not INT8 (TensorRT 11 has no FP16 flag); re-export it with "
                        "`ditq export --precision fp16 --target tensorrt`")
    results = {f: vs for f, vs in lint_onnx_set(onnx, target).items() if vs}
    if w4a8 := [v for vs in results.values() for v in vs if v.rule == "int4-weight-only"]:
        raise DitqError(f"the ONNX set {onnx.root} is W4A8 (INT4 weights with INT8 activations, e.g. "
                        f"{w4a8[0].node}): TensorRT has no INT4 x INT8 GEMM, INT4 is weight-only there; re-export "
                        "it as W4A16 with `ditq export --target tensorrt`")
    if results:
        file, (first, *_) = next(iter(results.items()))
        raise DitqError(f"{file} breaks {target}'s rules ({sum(map(len, results.values()))} violation(s), first: "
                        f"[{first.rule}] {first.node}: {first.message}); see `ditq lint {onnx.root} --target {target}`")


def check_fp8_gpu(onnx: OnnxArtifact, gpu_name: str, sm: str) -> None:
    """Refuse an FP8 set on a GPU without FP8 tensor cores (before Ada/Hopper, sm_89)."""
    fp8 = any(f.startswith("FP8") for f in onnx.recipe.get("weight_formats", ()))
    if fp8 and int(sm.removeprefix("sm_")) < 89:
        raise DitqError(f"the ONNX set {onnx.root} is W8A8-FP8, which TensorRT runs on Ada/Hopper (sm_89, sm_90) "
                        f"and newer; {gpu_name} is {sm}: calibrate an INT8 recipe (--format int) for this GPU")


def profile_shapes(onnx: OnnxArtifact, config: BuildConfig) -> dict[str, dict[str, list[int]]]:
    """min/opt/max shapes per input: ``hidden_states`` [batch, *sample_shape], ``timestep`` [batch] and the
    conditioning (``class_labels`` [batch], or PixArt's caption [batch, L, D] and mask [batch, L])."""
    per_sample = {"hidden_states": [int(d) for d in onnx.model["sample_shape"]], "timestep": [],
                  **{k: [int(d) for d in v] for k, v in onnx.model.get("inputs", {"class_labels": []}).items()}}
    batches = {"min": config.min_batch, "opt": config.opt_batch, "max": config.max_batch}
    return {name: {k: [b, *shape] for k, b in batches.items()} for name, shape in per_sample.items()}


def polygraphy_command(onnx_file: str, plan: str, profile: dict[str, dict[str, list[int]]],
                       config: BuildConfig) -> str:
    """The ``polygraphy convert`` line that builds the same engine (paths relative to the engine directory)."""
    argv = ["polygraphy", "convert", onnx_file, "--convert-to", "trt", "-o", plan]
    for kind in ("min", "opt", "max"):
        argv += [f"--trt-{kind}-shapes", *(f"{n}:[{','.join(map(str, s[kind]))}]" for n, s in profile.items())]
    argv += ["--strongly-typed", "--builder-optimization-level", str(config.opt_level),
             "--pool-limit", f"workspace:{config.workspace_bytes}",
             "--load-timing-cache", TIMING_CACHE, "--save-timing-cache", TIMING_CACHE]
    return shlex.join(argv)


def network_flags(version: str) -> int:
    """``create_network`` flags: explicit STRONGLY_TYPED on 10.x; 11.x networks are strongly typed by default."""
    if trt_major(version) >= 11:
        return 0
    return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)


def _describe(err: trt.ParserError) -> str:
    where = err.node_name() or (f"node #{err.node()}" if err.node() >= 0 else "graph")
    return f"{where}: {' '.join(err.desc().split())}"


def _parse(builder: trt.Builder, logger: Any, path: Path, flags: int) -> trt.INetworkDefinition:
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(path)):
        errors = [_describe(parser.get_error(i)) for i in range(parser.num_errors)]
        raise DitqError(f"TensorRT cannot parse {path.name} ({len(errors)} error(s)): {'; '.join(errors)}; "
                        "check the graph with `ditq lint`")
    network.name = path.stem
    return network


def _build_plan(builder: trt.Builder, logger: Any, path: Path, flags: int, profile: dict[str, dict[str, list[int]]],
                config: BuildConfig, cache: trt.ITimingCache | bytes) -> tuple[trt.IHostMemory, trt.ITimingCache]:
    """Parse and build one group; ``cache`` is the shared timing cache (or its serialized bytes, first group)."""
    network = _parse(builder, logger, path, flags)
    found = {network.get_input(i).name: network.get_input(i).shape for i in range(network.num_inputs)}
    if set(found) != set(profile):
        raise DitqError(f"{path.name} has inputs {sorted(found)}, expected {sorted(profile)}; re-run `ditq export`")
    for name, dims in found.items():
        static = [(i, d) for i in range(len(dims)) if (d := dims[i]) >= 0]
        if bad := [(i, d) for i, d in static if d != profile[name]["opt"][i]]:
            raise DitqError(f"{path.name}: input {name} has static dims {bad} (axis, size) that do not match "
                            f"the manifest's shape {profile[name]['opt']}; re-run `ditq export`")
    bconfig = builder.create_builder_config()
    bconfig.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, config.workspace_bytes)
    bconfig.builder_optimization_level = config.opt_level
    opt_profile = builder.create_optimization_profile()
    for name, shapes in profile.items():
        opt_profile.set_shape(name, trt.Dims(shapes["min"]), trt.Dims(shapes["opt"]), trt.Dims(shapes["max"]))
    if bconfig.add_optimization_profile(opt_profile) < 0:
        raise DitqError(f"TensorRT rejected the batch profile {profile} for {path.name}; check --*-batch")
    if isinstance(cache, bytes):
        cache = bconfig.create_timing_cache(cache)
    if not bconfig.set_timing_cache(cache, ignore_mismatch=False):
        log.warning("the timing cache does not fit this TensorRT/GPU; starting an empty one")
        cache = bconfig.create_timing_cache(b"")
        if not bconfig.set_timing_cache(cache, ignore_mismatch=False):
            raise DitqError(f"TensorRT refused even an empty timing cache for {path.name}; check the TensorRT "
                            "install (`ditq doctor`)")
    logger.errors.clear()
    plan: trt.IHostMemory | None = builder.build_serialized_network(network, bconfig)  # None on failure
    if plan is None:  # the first error names the cause; the rest are usually its consequences
        errors = logger.errors
        why = (errors[0] + (f" (and {len(errors) - 1} more error(s))" if len(errors) > 1 else "")) if errors \
            else "no error was logged"
        raise DitqError(f"TensorRT failed to build {path.name}: {why}")
    return plan, bconfig.get_timing_cache()  # the attached cache, now holding this group's timings too


def _read_cache(config: BuildConfig, out: Path) -> bytes:
    for candidate in (config.timing_cache, out / TIMING_CACHE if config.force else None):
        if candidate is not None and Path(candidate).is_file():
            log.info("loading timing cache %s", candidate)
            return Path(candidate).read_bytes()
    return b""


def _write(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def build_engines(onnx: OnnxArtifact, out: Path, config: BuildConfig = BuildConfig(), *,
                  progress: bool = True) -> EngineArtifact:
    """Write ``out/``: ``group_{g}.plan`` per group, ``timing.cache`` and ``manifest.json`` (kind ditq.engines)."""
    try:  # the installed TensorRT's rules when there is one; else the newest, and require_tensorrt refuses below
        installed: str | None = require_tensorrt()
    except DitqError:
        installed = None
    check_deployable(onnx, installed)
    inputs = [p for p in (onnx.root, config.timing_cache) if p is not None]
    check_output(Path(out), kind=EngineArtifact.KIND, force=config.force, inputs=inputs)
    version = require_tensorrt()
    gpu_name, sm = require_gpu()
    check_fp8_gpu(onnx, gpu_name, sm)
    out = Path(out)
    start = time.perf_counter()
    profile = profile_shapes(onnx, config)
    flags = network_flags(version)
    onnx_rel = os.path.relpath(onnx.root.resolve(), out.resolve())
    logger = trt_logger()  # the process's one logger: a Runtime made earlier would bypass a second one
    builder = trt.Builder(logger)
    cache: trt.ITimingCache | bytes = _read_cache(config, out)
    groups: list[EngineGroup] = []
    with staging_dir(out, kind=EngineArtifact.KIND, force=config.force, inputs=inputs) as tmp:
        for group in tqdm(onnx.groups, desc="build", unit="engine", disable=not progress, leave=False):
            t0 = time.perf_counter()
            plan, cache = _build_plan(builder, logger, onnx.path(group.group_id), flags, profile, config, cache)
            name = f"group_{group.group_id}.plan"
            _write(tmp / name, plan)
            onnx_file = os.path.join(onnx_rel, group.file)
            groups.append(EngineGroup(group.group_id, group.interval, name, sha256_file(tmp / name), onnx_file,
                                      group.sha256, polygraphy_command(onnx_file, name, profile, config),
                                      round(time.perf_counter() - t0, 3)))
            log.info("built %s in %.1f s", name, groups[-1].seconds)
        assert not isinstance(cache, bytes)
        serialized = cache.serialize()
        _write(tmp / TIMING_CACHE, serialized)
        if (onnx.root / CAPTIONS_FILE).is_file():  # a text-conditioned set: its caption table travels with it
            shutil.copyfile(onnx.root / CAPTIONS_FILE, tmp / CAPTIONS_FILE)
        EngineArtifact(
            root=tmp, trt_version=version, gpu_name=gpu_name, compute_capability=sm, precision=onnx.precision,
            groups=tuple(groups), profile=profile,
            builder={"strongly_typed": True, "network_flags": flags, "builder_flags": [],
                     "optimization_level": config.opt_level, "workspace_bytes": config.workspace_bytes},
            onnx_dir=onnx_rel, parent_sha256=manifest_sha256(onnx.root), model=dict(onnx.model),
            scheduler_config=dict(onnx.scheduler_config),
            recipe={k: v for k, v in onnx.recipe.items() if k != "dir"},  # dir is relative to the ONNX set
            seconds=round(time.perf_counter() - start, 3),
        ).save()
    if config.timing_cache is not None:
        Path(config.timing_cache).parent.mkdir(parents=True, exist_ok=True)
        _write(Path(config.timing_cache), serialized)
    return EngineArtifact.load(out)
