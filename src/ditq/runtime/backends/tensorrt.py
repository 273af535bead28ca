"""``tensorrt``: every group's engine deserialized once, one execution context each, one shared
activation buffer, I/O through torch CUDA tensors on one torch CUDA stream.

- Contexts use ``ExecutionContextAllocationStrategy.USER_MANAGED`` and all share ONE device buffer sized by the
  largest ``device_memory_size_v2`` of the engines (``device_memory_size`` on TensorRT < 10.1). Sharing is safe
  because every call runs on the same stream, one after another.
- Switching group only selects another context: nothing is copied or reloaded.
- The sampler hands over CPU tensors: each call copies them into per-(group, batch) static CUDA tensors (casting
  to the engine's input dtypes), runs ``execute_async_v3`` and copies the output back to a float32 CPU tensor.
- ``cuda_graphs=True`` captures each (group, batch) once after a first, normal run and replays it afterwards, each on
  its OWN execution context (all sharing the one buffer): a context's input shapes and tensor addresses are fixed
  when its graph is captured and never change afterwards. With one context per group, replaying batch b's graph
  after batch b' ran on it would replay against a context whose shapes belong to b' (TensorRT copies shape values
  from the context's host state at enqueue; NVIDIA's diffusion demo captures graphs only with static shapes). The
  static I/O tensors and the shared buffer keep the captured addresses valid.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ditq._deps import require_tensorrt, trt, trt_logger
from ditq.artifacts.captions import conditioning_from_info
from ditq.artifacts.engines import EngineArtifact
from ditq.errors import DitqError
from ditq.models.schedule import SchedulerSpec
from ditq.runtime.backends.base import GroupedBackend, read_manifest_kind

NAME = "tensorrt"


def torch_dtype(dtype: trt.DataType) -> torch.dtype:
    table = {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16, trt.DataType.BF16: torch.bfloat16,
             trt.DataType.INT32: torch.int32, trt.DataType.INT64: torch.int64, trt.DataType.INT8: torch.int8,
             trt.DataType.UINT8: torch.uint8, trt.DataType.BOOL: torch.bool}
    if dtype not in table:
        raise DitqError(f"the engine has an I/O tensor of type {dtype}, which ditq cannot feed; rebuild it")
    return table[dtype]


def device_memory_size(engine: trt.ICudaEngine) -> int:
    """Activation memory one context needs (v2 since TensorRT 10.1, the only one on 11.x)."""
    if hasattr(engine, "device_memory_size_v2"):
        return int(engine.device_memory_size_v2)
    return int(engine.device_memory_size)


@dataclass
class EngineRunner:
    """One group: its engine, USER_MANAGED contexts bound to the shared buffer, static I/O per batch.

    Without CUDA graphs one context serves every batch and is rebound (shapes and addresses) on every call; with
    them each batch gets its own context, bound once, captured once, then only replayed."""

    engine: trt.ICudaEngine
    scratch: torch.Tensor  # the shared activation buffer (uint8, CUDA)
    stream: torch.cuda.Stream
    batch_range: tuple[int, int]
    cuda_graphs: bool = False
    runtime: Any = None  # the trt.Runtime the engine came from, kept alive as long as the engine
    context: trt.IExecutionContext = field(init=False)  # the context of plain (not graphed) runs
    contexts: dict[int, trt.IExecutionContext] = field(default_factory=dict)  # batch -> its own context (graphs)
    io: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)  # batch -> name -> static tensor
    graphs: dict[int, torch.cuda.CUDAGraph] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.context = self._new_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if not {"hidden_states", "timestep"} <= set(self.inputs) or len(self.outputs) != 1:
            raise DitqError(f"the engine has inputs {self.inputs} and outputs {self.outputs}, expected hidden_states, "
                            "timestep, the conditioning and one output; rebuild it with `ditq build`")
        self.dtypes = {n: torch_dtype(self.engine.get_tensor_dtype(n)) for n in names}

    def _new_context(self) -> trt.IExecutionContext:
        context = self.engine.create_execution_context(trt.ExecutionContextAllocationStrategy.USER_MANAGED)
        if context is None:
            raise DitqError("TensorRT could not create an execution context (out of GPU memory?)")
        if hasattr(context, "set_device_memory"):  # TensorRT >= 10.1
            context.set_device_memory(self.scratch.data_ptr(), self.scratch.numel())
        else:  # TensorRT 10.0: the (deprecated) property; the stubs no longer declare it
            setattr(context, "device_memory", self.scratch.data_ptr())  # noqa: B010
        return context

    def context_for(self, batch: int) -> trt.IExecutionContext:
        """The context batch ``batch`` runs on: the shared one, or with CUDA graphs the batch's own."""
        if not self.cuda_graphs:
            return self.context
        if batch not in self.contexts:
            self.contexts[batch] = self.context if not self.contexts else self._new_context()
        return self.contexts[batch]

    def _bind(self, context: trt.IExecutionContext, batch: int, feeds: dict[str, torch.Tensor]
              ) -> dict[str, torch.Tensor]:
        """Set this batch's input shapes and tensor addresses (static tensors, allocated once per batch)."""
        io = self.io.get(batch)
        if io is None:
            io = {n: torch.empty(tuple(feeds[n].shape), dtype=self.dtypes[n], device=self.scratch.device)
                  for n in self.inputs}
        for name in self.inputs:
            if not context.set_input_shape(name, trt.Dims(list(io[name].shape))):
                raise DitqError(f"TensorRT rejected shape {list(io[name].shape)} for {name}; rebuild the engines")
        for name in self.outputs:
            if name not in io:
                dims = context.get_tensor_shape(name)
                io[name] = torch.empty([dims[i] for i in range(len(dims))], dtype=self.dtypes[name],
                                       device=self.scratch.device)
        for name, tensor in io.items():
            context.set_tensor_address(name, tensor.data_ptr())
        self.io[batch] = io
        return io

    def _execute(self, context: trt.IExecutionContext) -> None:
        if not context.execute_async_v3(self.stream.cuda_stream):
            raise DitqError("TensorRT failed to run the engine (execute_async_v3 returned False); see its log")

    def __call__(self, x: torch.Tensor, timestep: torch.Tensor, cond: dict[str, torch.Tensor]) -> torch.Tensor:
        batch = int(x.shape[0])
        lo, hi = self.batch_range
        if not lo <= batch <= hi:
            raise DitqError(f"batch {batch} (CFG included) is outside the engines' profile [{lo}, {hi}]; rebuild "
                            f"with `ditq build --max-batch {max(batch, hi)} --min-batch {min(batch, lo)}`")
        feeds = {"hidden_states": x, "timestep": timestep, **cond}
        if missing := sorted(set(self.inputs) - set(feeds)):
            raise DitqError(f"the engine needs inputs {missing}, which the caller did not pass")
        context = self.context_for(batch)
        with torch.cuda.stream(self.stream):
            graph = self.graphs.get(batch)
            # a graphed batch's context was bound once, before its capture, and nothing has rebound it since
            io = self.io[batch] if graph is not None else self._bind(context, batch, feeds)
            for name in self.inputs:
                io[name].copy_(feeds[name])  # host -> device on self.stream, cast to the engine's dtype
            if graph is not None:
                graph.replay()
            else:
                self._execute(context)
            out = io[self.outputs[0]].to("cpu", torch.float32)
        self.stream.synchronize()
        if self.cuda_graphs and graph is None:  # the first run at this shape did TensorRT's deferred set-up
            captured = torch.cuda.CUDAGraph()
            with torch.cuda.graph(captured, stream=self.stream):
                self._execute(context)
            self.graphs[batch] = captured
        return out


def tensorrt_backend(engine_dir: Path, *, cuda_graphs: bool = False) -> GroupedBackend:
    """All groups of an engine set, ready to sample; refuses plans built for another TensorRT version or GPU."""
    return backend_from_artifact(EngineArtifact.load(Path(engine_dir)), cuda_graphs=cuda_graphs)


def backend_from_artifact(art: EngineArtifact, *, cuda_graphs: bool = False) -> GroupedBackend:
    """The engines deserialized once, one context each sharing one activation buffer (built again on
    ``activate()`` after ``deactivate()``, which frees them)."""
    return GroupedBackend.from_loader(f"{NAME}-cudagraph" if cuda_graphs else NAME, art.intervals,
                                      lambda: load_runners(art, cuda_graphs=cuda_graphs))


def load_runners(art: EngineArtifact, *, cuda_graphs: bool = False) -> list[EngineRunner]:
    require_tensorrt()
    runtime = trt.Runtime(trt_logger())  # the one logger the build uses too (TensorRT keeps only the first)
    engines: list[trt.ICudaEngine] = []
    for group in art.groups:
        trt_logger().errors.clear()
        engine: trt.ICudaEngine | None = runtime.deserialize_cuda_engine(art.path(group.group_id).read_bytes())
        if engine is None:
            logged = trt_logger().errors
            why = f" ({logged[-1]})" if logged else ""
            raise DitqError(f"TensorRT cannot deserialize {art.path(group.group_id)}{why}; {art.rebuild_hint()}")
        engines.append(engine)
    scratch = torch.empty(max(256, *(device_memory_size(e) for e in engines)), dtype=torch.uint8, device="cuda")
    stream = torch.cuda.Stream()
    return [EngineRunner(e, scratch, stream, art.batch_range, cuda_graphs, runtime) for e in engines]


def open_artifact(path: Path, *, fp: bool = False, threads: int | None = None, fuse: bool | None = None,
                  scheduler: SchedulerSpec | None = None, cuda_graphs: bool = False
                  ) -> tuple[GroupedBackend, dict[str, Any]]:
    """``open_backend(path, "tensorrt")``: an engine directory from ``ditq build``; the backend and what sampling
    needs (shapes, classes, scheduler). ``threads`` and ``fuse`` (ONNX Runtime settings) do not apply."""
    kind = read_manifest_kind(path)
    if kind != EngineArtifact.KIND:
        raise DitqError(f"--backend tensorrt needs an engine directory from `ditq build`, got a {kind}")
    if fp:
        raise DitqError("--fp is not available with --backend tensorrt (engines are built from the quantized "
                        "graphs); use --backend onnxruntime --fp on the ONNX directory")
    art = EngineArtifact.load(Path(path))
    info = {**art.model, "scheduler_config": art.scheduler_config}
    info["conditioning"] = conditioning_from_info(info, path)
    return backend_from_artifact(art, cuda_graphs=cuda_graphs), info
