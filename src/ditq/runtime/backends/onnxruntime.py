"""``onnxruntime``: the exported graphs of an ONNX directory, one CPU session per timestep group (or the FP
reference graph with ``fp=True``), all created up front."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ditq.artifacts.captions import conditioning_from_info
from ditq.core.cond import Cond
from ditq.errors import DitqError
from ditq.models.schedule import SchedulerSpec
from ditq.runtime.backends.base import Fn, GroupedBackend, read_manifest_kind

NAME = "onnxruntime"


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

    name = f"{NAME}-fp" if fp else NAME if fuse else f"{NAME}-exact"
    if artifact.single_graph and not fp:  # `export --single-graph`: one session, the group chosen by its feeds
        return GroupedBackend.from_loader(f"{name}-single", intervals, lambda: single_graph_fns(artifact, threads,
                                                                                              fuse, np_float))
    return GroupedBackend.from_loader(name, intervals, lambda: [make(ort_session(p, threads, fuse=fuse))
                                                                for p in paths])


def single_graph_fns(artifact: Any, threads: int | None, fuse: bool, np_float: Any) -> list[Fn]:
    """One session on the set's single graph; group g's call adds that group's shift and scale-ratio inputs."""
    from ditq.artifacts.single_graph import load_feeds

    path = artifact.root / artifact.single_graph["file"]
    sess = ort_session(path, threads, fuse=fuse)
    group_feeds = load_feeds(path, len(artifact.groups))

    def make(extra: dict[str, np.ndarray]) -> Fn:
        def run(x: torch.Tensor, t: torch.Tensor, cond: Cond) -> torch.Tensor:
            return torch.from_numpy(sess.run(None, {**onnx_feeds(x, t, cond, np_float), **extra})[0]
                                    .astype(np.float32))

        return run

    return [make(f) for f in group_feeds]


def onnx_feeds(x: torch.Tensor, t: torch.Tensor, cond: Cond, np_float: Any = np.float32) -> dict[str, np.ndarray]:
    """The graph inputs: float tensors in the graph's float type, integer ones (class labels) as int64."""
    feeds = {"hidden_states": x, "timestep": t, **cond}
    return {k: v.detach().cpu().numpy().astype(np.int64 if not v.is_floating_point() else np_float)
            for k, v in feeds.items()}


def open_artifact(path: Path, *, fp: bool = False, threads: int | None = None, fuse: bool | None = None,
                  scheduler: SchedulerSpec | None = None) -> tuple[GroupedBackend, dict[str, Any]]:
    """``open_backend(path, "onnxruntime")``: an ONNX directory from ``ditq export``. ``fuse=None`` picks ONNX
    Runtime's fused integer kernels only on a CPU with VNNI (``ditq.runtime.cpu``), where they are exact."""
    from ditq.artifacts.onnx import OnnxArtifact

    kind_found = read_manifest_kind(path)
    if kind_found != OnnxArtifact.KIND:
        raise DitqError(f"--backend onnxruntime needs an ONNX directory from `ditq export`, got a {kind_found}")
    art = OnnxArtifact.load(path)
    if fuse is None:
        from ditq.runtime.cpu import use_fused_qdq

        fuse = use_fused_qdq("auto")
    info = {**art.model, "scheduler_config": art.scheduler_config,
            "conditioning": conditioning_from_info(art.model, art.root)}
    return onnxruntime_backend(art, fp=fp, threads=threads, fuse=fuse), info
