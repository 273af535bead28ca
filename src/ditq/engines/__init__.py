"""TensorRT engines: ``build_engines(onnx, out, BuildConfig) -> EngineArtifact`` (tensorrt is imported lazily)."""

from ditq.engines.artifact import EngineArtifact, EngineGroup
from ditq.engines.build import BuildConfig, build_engines

__all__ = ["BuildConfig", "EngineArtifact", "EngineGroup", "build_engines"]
