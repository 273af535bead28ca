"""TensorRT engines: ``build_engines(onnx, out, BuildConfig) -> EngineArtifact`` (tensorrt is imported lazily)."""

from ditq.artifacts.engines import EngineArtifact, EngineGroup
from ditq.engines.build import BuildConfig, build_engines

__all__ = ["BuildConfig", "EngineArtifact", "EngineGroup", "build_engines"]
