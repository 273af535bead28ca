"""``bench quality`` settings: the grid's methods, bit widths and step counts, and the calibration and sampling
around them (the defaults of every flag)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ditq.errors import DitqError

if TYPE_CHECKING:
    from ditq.testbed.scoring import SamplingSpec

METHOD_ORDER = ("minmax", "smoothquant", "ptq4dit", "htg", "qdit", "viditq")

BITS = {"W8A8": 8, "W8A8-FP8": 8, "W4A8": 4, "W4A16": 4}  # weight bits
# exported for TensorRT (``export --target tensorrt``): the W4A8 recipe with INT4 weight DQ only, activations float
WEIGHT_ONLY = frozenset({"W4A16"})
FORMATS = {"W8A8-FP8": "fp8_e4m3"}  # the quantizer grid of a bit width when not integer (FP8 E4M3)


TINY = "tiny"  # model name: a seeded tiny DiT written into the output directory (quick mode, tests)


def parse_method(entry: str) -> tuple[str, dict[str, Any]]:
    """``name`` or ``name:key=value[:key=value...]`` (values as JSON, else strings): a method and its options."""
    name, *items = entry.split(":")
    params: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep:
            raise DitqError(f"method option {item!r} in {entry!r} is not key=value")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        params[key] = tuple(value) if isinstance(value, list) else value
    return name, params


@dataclass(frozen=True)
class QualityConfig:
    model: str = "demo"
    methods: tuple[str, ...] = METHOD_ORDER  # names, or variants "name:key=value[:...]" (qdit:min_mean_group=64)
    bits: tuple[str, ...] = ("W8A8", "W8A8-FP8", "W4A8", "W4A16")  # W8A8-FP8: static methods only (others are skipped)
    steps: tuple[int, ...] = (100, 50, 25)
    eval_samples: int = 100  # images per cell (the classifier metrics need many)
    sqnr_samples: int = 16  # images whose model calls the per-step SQNR is teacher-forced on
    w4_block: int = 0  # W4A8 weight block (0: per output channel)
    calib_steps: int | None = None  # None: each method's own (ptq4dit: 25), else 100
    calib_samples: int | None = None  # None: each method's own (ptq4dit: 32), else 16
    calib_seed: int = 1  # != seed: calibration never sees the evaluation noise
    calib_seeds: tuple[int, ...] = ()  # calibrate (and evaluate) every cell once per seed; () = (calib_seed,)
    seed: int = 0
    cfg_scale: float = 3.0
    method_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    agreement: tuple[str, str] | None = None  # (method, bits) also evaluated on ONNX Runtime; None: htg at W4A8
    peer: bool = True  # Model Optimizer rows when nvidia-modelopt imports
    plots: bool = True
    threads: int | None = None

    def __post_init__(self) -> None:
        from ditq.calibration.methods import METHODS

        if unknown := [m for m in self.methods if parse_method(m)[0] not in METHODS]:
            raise DitqError(f"unknown method {unknown[0]!r}; choose from {', '.join(METHODS)}")
        if bad := [b for b in self.bits if b not in BITS]:
            raise DitqError(f"unknown bit width {bad[0]!r}; choose from {', '.join(BITS)}")
        if not self.methods or not self.bits or not self.steps or min(self.steps) < 1:
            raise DitqError("--methods, --bits and --steps must be non-empty (steps >= 1)")
        if self.eval_samples < 1 or self.sqnr_samples < 1:
            raise DitqError(f"--eval-samples must be >= 1, got {self.eval_samples}")
        if self.seed in self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise DitqError(f"--calib-seeds must be distinct and differ from the evaluation seed {self.seed}, "
                            f"got {list(self.seeds)}")
        if self.w4_block not in (0, 32, 64, 128):
            raise DitqError(f"--w-block must be 0, 32, 64 or 128, got {self.w4_block}")

    @property
    def seeds(self) -> tuple[int, ...]:
        """The calibration seeds: every static/dynamic cell and peer row is calibrated once per seed."""
        return tuple(self.calib_seeds) or (self.calib_seed,)

    def spec(self, steps: int) -> SamplingSpec:
        """The evaluation sampler at ``steps`` (the model's own scheduler, this config's CFG and seed)."""
        from ditq.testbed.scoring import SamplingSpec

        return SamplingSpec(steps=steps, cfg_scale=self.cfg_scale, seed=self.seed)


def quick_config(**overrides: Any) -> QualityConfig:
    """A CI smoke run: the tiny model, two methods, W8A8 and W4A8, one short step count (well under a minute)."""
    base = dict(model=TINY, methods=("minmax", "htg"), bits=("W8A8", "W4A8"), steps=(5,), eval_samples=6,
                sqnr_samples=2,
                calib_steps=6, calib_samples=2, peer=False, method_params={"htg": {"groups": 2}})
    return QualityConfig(**{**base, **overrides})
