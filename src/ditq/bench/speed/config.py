"""``bench speed`` settings: what is timed, how often, on which backends (the defaults of every flag)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from ditq.errors import DitqError

if TYPE_CHECKING:
    from ditq.testbed.scoring import SamplingSpec

BACKENDS = ("onnxruntime", "torch-int8")  # the runtime registry's names


@dataclass(frozen=True)
class SpeedConfig:
    models: tuple[str, ...] = ("demo", "dit-s2-like")
    batches: tuple[int, ...] = (1, 8, 32)
    threads: int = 2
    warmup: int = 3
    repeats: int = 10
    backends: tuple[str, ...] = ("onnxruntime",)
    device: str = "cpu"  # torch backend: "cpu" or "cuda"
    torch_dtype: str = "float32"  # float parts of the torch pair (FP model and INT8 model alike)
    sampling_steps: int = 20  # DDIM steps of the whole-sampling timing; 0 skips it
    sampling_batch: int = 4  # images per sampling run (CFG doubles the model batch)
    sampling_repeats: int = 3
    cfg_scale: float = 3.0
    spinning: bool = False  # ORT intra-op thread spinning (fast on an idle machine, burns CPU on a busy one)
    profile: bool = False  # ORT per-op-type time breakdown at profile_batch
    profile_batch: int = 8
    method: str | None = None  # None: htg (2 groups) for CPU-sized models, minmax for the GPU-sized ones
    groups: int = 2
    calib_steps: int = 4
    calib_samples: int = 2
    keep_artifacts: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.models:
            raise DitqError("--models is empty; name at least one model (demo, dit-s2-like, ... or a directory)")
        if not self.batches or min(self.batches) < 1:
            raise DitqError(f"--batches must be positive integers, got {list(self.batches)}")
        if self.threads < 1 or self.repeats < 1 or self.warmup < 0:
            raise DitqError(f"--threads and --repeats must be >= 1 and --warmup >= 0, got {self.threads}, "
                            f"{self.repeats}, {self.warmup}")
        bad = [b for b in self.backends if b not in BACKENDS]
        if bad or not self.backends:
            raise DitqError(f"unknown backend {bad[0] if bad else ''!r}; choose from {', '.join(BACKENDS)}")
        if self.device not in ("cpu", "cuda"):
            raise DitqError(f"--device must be cpu or cuda, got {self.device!r}")
        if self.torch_dtype not in ("float32", "float16", "bfloat16"):
            raise DitqError(f"--torch-dtype must be float32, float16 or bfloat16, got {self.torch_dtype!r}")
        if self.sampling_steps < 0 or self.sampling_batch < 1 or self.sampling_repeats < 1:
            raise DitqError("--sampling-steps must be >= 0, the sampling batch and repeats >= 1")

    @property
    def sampling_spec(self) -> SamplingSpec:
        """The whole-sampling timing's sampler: DDIM, ``sampling_steps`` steps, CFG and seed of this config."""
        from ditq.testbed.scoring import SamplingSpec

        return SamplingSpec(steps=self.sampling_steps, cfg_scale=self.cfg_scale, seed=self.seed, scheduler="ddim")

QUICK = SpeedConfig(models=("tiny",), batches=(1, 2), threads=1, warmup=2, repeats=5,
                    backends=("onnxruntime", "torch-int8"), sampling_steps=4, sampling_batch=1, sampling_repeats=2)


def default_config(*, quick: bool = False, cuda: bool | None = None) -> SpeedConfig:
    """``QUICK`` for CI smoke runs; otherwise the CPU set, or the GPU set (torch pair, DiT-XL/2) on CUDA."""
    if quick:
        return QUICK
    if cuda is None:
        import torch

        cuda = torch.cuda.is_available()
    if cuda:
        return SpeedConfig(models=("demo", "dit-xl2-256", "dit-xl2-512"), backends=("torch-int8",), device="cuda")
    return SpeedConfig()


def with_overrides(config: SpeedConfig, **kwargs: Any) -> SpeedConfig:
    """``config`` with the non-None keyword arguments replaced (CLI flags over a default set)."""
    return replace(config, **{k: v for k, v in kwargs.items() if v is not None})
