"""TensorRT tests: ``@pytest.mark.trt`` tests run only with a real TensorRT and a CUDA GPU (skipped with the reason
otherwise); the rest run everywhere, some against ``fake_trt``, a recording stand-in for the few TensorRT classes
the build uses (it checks ditq's orchestration, not TensorRT: mypy checks the real API names against its stubs)."""

from __future__ import annotations

import enum
import sys
import types
from pathlib import Path

import pytest

FAKE_GPU = ("Fake GPU", "sm_90")


def trt_unavailable() -> str | None:
    """Why the real TensorRT tests cannot run here, or None when they can."""
    from ditq._deps import installed_tensorrt_version

    version = installed_tensorrt_version()
    if version is None:
        return "tensorrt is not installed (pip install 'ditq[trt]' on a machine with an NVIDIA GPU)"
    import torch

    if not torch.cuda.is_available():
        return f"TensorRT {version} is installed but torch sees no CUDA GPU"
    return None


@pytest.fixture(scope="session")
def tiny_onnx(tiny_model, tiny_recipe, tiny_recipe_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """The tiny W8A8 set as `ditq build` takes it: FP16 outside INT8 (it refuses FP32 sets), for TensorRT."""
    from ditq.export.onnx_export import export_onnx

    return export_onnx(tiny_model, tiny_recipe, tmp_path_factory.mktemp("onnx16") / "onnx", recipe_dir=tiny_recipe_dir,
                       precision="fp16", target="tensorrt", progress=False)


@pytest.fixture(autouse=True)
def _skip_trt_without_tensorrt(request: pytest.FixtureRequest) -> None:
    if request.node.get_closest_marker("trt") is not None and (why := trt_unavailable()):
        pytest.skip(why)


@pytest.fixture(scope="session")
def trt_ready() -> None:
    """Request first in module-scoped fixtures that need TensorRT: they are set up before autouse fixtures."""
    if why := trt_unavailable():
        pytest.skip(why)


@pytest.fixture
def no_tensorrt(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``import tensorrt`` fail, as on a machine without it (also where TensorRT is installed)."""
    monkeypatch.setitem(sys.modules, "tensorrt", None)


class _Severity(enum.IntEnum):
    INTERNAL_ERROR = 0
    ERROR = 1
    WARNING = 2
    INFO = 3
    VERBOSE = 4


class _Dims(tuple):
    pass


class _Tensor:
    def __init__(self, name: str, shape: list[int]) -> None:
        self.name, self.shape = name, _Dims(shape)


class _Network:
    def __init__(self, flags: int) -> None:
        self.flags, self.name, self.inputs = flags, "", []

    @property
    def num_inputs(self) -> int:
        return len(self.inputs)

    def get_input(self, i: int) -> _Tensor:
        return self.inputs[i]


class _ParserError:
    def __init__(self, node: int, name: str, desc: str) -> None:
        self._node, self._name, self._desc = node, name, desc

    def node(self) -> int:
        return self._node

    def node_name(self) -> str:
        return self._name

    def desc(self) -> str:
        return self._desc


class _TimingCache:
    def __init__(self, data: bytes) -> None:
        self.entries = [e for e in data.decode().split("\n") if e]

    def serialize(self) -> bytes:
        return "\n".join(self.entries).encode()


class FakeTensorRT(types.ModuleType):
    """Records what the build asked for; ``fail_parse`` / ``fail_build`` name graphs (file stems) to fail;
    ``set_timing_cache`` refuses a cache holding an entry ``foreign`` (another TensorRT/GPU), or every cache with
    ``refuse_caches``. Like TensorRT, it keeps ONE logger per process: the first one a Builder, OnnxParser or Runtime
    is given receives every message (``process_logger``); later ones are ignored. ``Runtime`` deserializes plans
    into ``FakeEngine``s (``fail_deserialize`` makes it log an error and return None)."""

    def __init__(self, version: str = "10.13.0.35") -> None:
        super().__init__("tensorrt")
        self.__version__ = version
        self.fail_parse: set[str] = set()
        self.fail_build: set[str] = set()
        self.caches_created: list[bytes] = []
        self.configs: list[types.SimpleNamespace] = []
        self.refuse_caches = False
        self.fail_deserialize = False
        self.process_logger: ILogger | None = None
        fake = self

        class ILogger:
            Severity = _Severity

            def __init__(self) -> None:
                pass

        class Logger(ILogger):  # TensorRT's own logger: prints, keeps nothing
            WARNING = _Severity.WARNING

            def __init__(self, min_severity: _Severity = _Severity.WARNING) -> None:
                super().__init__()
                self.messages: list[str] = []

            def log(self, severity: _Severity, msg: str) -> None:
                self.messages.append(msg)

        def adopt(logger: ILogger) -> None:
            if fake.process_logger is None:
                fake.process_logger = logger

        class Builder:
            def __init__(self, logger: ILogger) -> None:
                adopt(logger)

            def create_network(self, flags: int) -> _Network:
                return _Network(flags)

            def create_builder_config(self) -> types.SimpleNamespace:
                cfg = types.SimpleNamespace(pools={}, builder_optimization_level=None, profiles=[], cache=None)
                cfg.set_memory_pool_limit = lambda pool, size: cfg.pools.__setitem__(pool, size)
                cfg.add_optimization_profile = lambda p: cfg.profiles.append(p) or 0
                cfg.create_timing_cache = lambda data: fake.caches_created.append(bytes(data)) or _TimingCache(data)
                def set_timing_cache(cache: _TimingCache, ignore_mismatch: bool) -> bool:
                    if fake.refuse_caches or "foreign" in cache.entries:
                        return False
                    cfg.cache = cache
                    return True

                cfg.set_timing_cache = set_timing_cache
                cfg.get_timing_cache = lambda: cfg.cache
                fake.configs.append(cfg)
                return cfg

            def create_optimization_profile(self) -> types.SimpleNamespace:
                prof = types.SimpleNamespace(shapes={})
                prof.set_shape = lambda name, lo, opt, hi: prof.shapes.__setitem__(name, (list(lo), list(opt),
                                                                                         list(hi)))
                return prof

            def build_serialized_network(self, network: _Network, cfg: types.SimpleNamespace) -> bytes | None:
                if network.name in fake.fail_build:
                    assert fake.process_logger is not None
                    fake.process_logger.log(_Severity.ERROR, "out of\nmemory")
                    return None
                cfg.cache.entries.append(network.name)
                return f"PLAN {network.name} flags={network.flags} {sorted(cfg.profiles[0].shapes.items())}".encode()

        class OnnxParser:
            def __init__(self, network: _Network, logger: ILogger) -> None:
                adopt(logger)
                self.network, self.errors = network, []

            def parse_from_file(self, path: str) -> bool:
                import onnx

                if Path(path).stem in fake.fail_parse:
                    self.errors = [_ParserError(3, "/blocks.0/MatMul", "Assertion failed:\nscale must be > 0"),
                                   _ParserError(-1, "", "1 node(s) not supported")]
                    return False
                for vi in onnx.load(path, load_external_data=False).graph.input:
                    dims = [d.dim_value if d.HasField("dim_value") else -1 for d in vi.type.tensor_type.shape.dim]
                    self.network.inputs.append(_Tensor(vi.name, dims))
                return True

            @property
            def num_errors(self) -> int:
                return len(self.errors)

            def get_error(self, i: int) -> _ParserError:
                return self.errors[i]

        class Runtime:
            def __init__(self, logger: ILogger) -> None:
                adopt(logger)

            def deserialize_cuda_engine(self, data: bytes) -> FakeEngine | None:
                if fake.fail_deserialize:
                    assert fake.process_logger is not None
                    fake.process_logger.log(_Severity.ERROR, "plan built by another TensorRT")
                    return None
                return FakeEngine()

        self.ILogger, self.Logger, self.Builder, self.OnnxParser, self.Runtime = (ILogger, Logger, Builder, OnnxParser,
                                                                                  Runtime)
        self.DataType = types.SimpleNamespace(FLOAT="float", HALF="half", BF16="bf16", INT32="int32", INT64="int64",
                                              INT8="int8", UINT8="uint8", BOOL="bool")
        self.TensorIOMode = types.SimpleNamespace(INPUT="input", OUTPUT="output")
        self.FakeEngine = FakeEngine  # for tests that build a runner by hand
        self.ExecutionContextAllocationStrategy = types.SimpleNamespace(USER_MANAGED="user_managed")
        self.Dims = _Dims
        self.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=1)
        self.MemoryPoolType = types.SimpleNamespace(WORKSPACE="workspace")


class FakeContext:
    """A USER_MANAGED execution context: its current input shapes and tensor addresses, and what each
    ``execute_async_v3`` ran with (``runs``; the output tensor is left as it is)."""

    def __init__(self, engine: FakeEngine) -> None:
        self.engine = engine
        self.memory: tuple[int, int] | None = None
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.addresses: dict[str, int] = {}
        self.runs: list[dict[str, object]] = []

    def set_device_memory(self, ptr: int, size: int) -> None:
        self.memory = (ptr, size)

    def set_input_shape(self, name: str, dims: _Dims) -> bool:
        self.shapes[name] = tuple(dims)
        return True

    def get_tensor_shape(self, name: str) -> _Dims:
        return _Dims(self.shapes["hidden_states"])  # the output has the input's shape

    def set_tensor_address(self, name: str, ptr: int) -> bool:
        self.addresses[name] = ptr
        return True

    def bindings(self) -> dict[str, object]:
        return {"shapes": dict(self.shapes), "addresses": dict(self.addresses)}

    def execute_async_v3(self, stream: int) -> bool:
        self.runs.append(self.bindings())
        if FakeGraph.capturing is not None:
            FakeGraph.capturing.captured.append((self, self.bindings()))
        return True


class FakeEngine:
    """An engine with hidden_states [B, 4, 8, 8] + timestep [B] + class_labels [B] in, one output, all FLOAT."""

    IO = (("hidden_states", "input"), ("timestep", "input"), ("class_labels", "input"), ("out", "output"))

    def __init__(self) -> None:
        self.contexts: list[FakeContext] = []

    @property
    def num_io_tensors(self) -> int:
        return len(self.IO)

    def get_tensor_name(self, i: int) -> str:
        return self.IO[i][0]

    def get_tensor_mode(self, name: str) -> str:
        return dict(self.IO)[name]

    def get_tensor_dtype(self, name: str) -> str:
        return "float"

    @property
    def device_memory_size_v2(self) -> int:
        return 1024

    def create_execution_context(self, strategy: str) -> FakeContext:
        assert strategy == "user_managed"
        self.contexts.append(FakeContext(self))
        return self.contexts[-1]


class FakeGraph:
    """``torch.cuda.CUDAGraph`` without CUDA: capture records each context executed and its bindings then; a
    ``replay`` records whether every such context still has those bindings (a real graph replays TensorRT's
    captured work against the context's state)."""

    capturing: FakeGraph | None = None

    def __init__(self) -> None:
        self.captured: list[tuple[FakeContext, dict[str, object]]] = []
        self.replays: list[bool] = []

    def replay(self) -> None:
        assert self.captured, "replaying an empty graph"
        self.replays.append(all(ctx.bindings() == seen for ctx, seen in self.captured))


@pytest.fixture
def fake_cuda(monkeypatch: pytest.MonkeyPatch) -> list[FakeGraph]:
    """torch's CUDA stream and graph calls made harmless on CPU; returns the graphs captured."""
    import contextlib

    import torch

    graphs: list[FakeGraph] = []

    def new_graph() -> FakeGraph:
        graphs.append(FakeGraph())
        return graphs[-1]

    @contextlib.contextmanager
    def capture(graph: FakeGraph, stream: object = None):
        FakeGraph.capturing = graph
        try:
            yield
        finally:
            FakeGraph.capturing = None

    monkeypatch.setattr(torch.cuda, "stream", lambda stream: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "CUDAGraph", new_graph)
    monkeypatch.setattr(torch.cuda, "graph", capture)
    return graphs


@pytest.fixture
def fake_trt(monkeypatch: pytest.MonkeyPatch) -> FakeTensorRT:
    """A fake ``tensorrt`` 10.13 module and a fake sm_90 GPU for this test."""
    fake = FakeTensorRT()
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    monkeypatch.setattr("ditq._deps.current_gpu", lambda: FAKE_GPU)
    return fake
