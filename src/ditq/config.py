"""Quantization configs and named presets: one frozen object holds the method, its options, the bit widths and the
calibration run, so the Python API and ``ditq calibrate`` build the same thing.

A ``QuantConfig`` is a frozen dataclass: customise a preset with ``dataclasses.replace``, save it with ``to_dict``
(plain JSON) and read it back with ``from_dict``, which refuses another format ``version``. Invalid values raise
``DitqError`` when the object is built.

Example::

    import dataclasses, ditq

    config = dataclasses.replace(ditq.W8A8_HTG, method=ditq.HTGConfig(groups=4),
                                 calibration=ditq.CalibrationSpec(steps=50, samples=8))
    assert ditq.QuantConfig.from_dict(config.to_dict()) == config

The method configs (``HTGConfig``, ``SmoothQuantConfig``, ...) are the registered ones of
``ditq.calibration.methods``; this module bridges a ``QuantConfig`` to them and to ``CalibConfig``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal, get_args

from ditq.calibration.methods import METHODS, MethodConfig, method_config
from ditq.calibration.methods.htg import HTGConfig
from ditq.calibration.methods.minmax import MinMaxConfig
from ditq.calibration.methods.ptq4dit import PTQ4DiTConfig
from ditq.calibration.methods.qdit import QDiTConfig
from ditq.calibration.methods.smoothquant import SmoothQuantConfig
from ditq.calibration.methods.viditq import ViDiTQConfig
from ditq.errors import DitqError

if TYPE_CHECKING:
    from ditq.calibration.calibrate import CalibConfig

WeightBits = Literal[8, 4]
ActivationBits = Literal[8]
WeightBlock = Literal[0, 32, 64, 128]
WeightClip = Literal["output", "mse"]
QuantFormat = Literal["int", "fp8_e4m3"]
WeightRounding = Literal["nearest", "gptq"]
SchedulerName = Literal["ddpm", "ddim", "dpmsolver"]
FORMAT_VERSION = 1

__all__ = ["CalibrationSpec", "QuantConfig", "PRESETS", "preset", "HTGConfig", "MinMaxConfig", "PTQ4DiTConfig",
           "QDiTConfig", "SmoothQuantConfig", "ViDiTQConfig", "MethodConfig", "W8A8_HTG", "W4A8_HTG",
           "W8A8_SMOOTHQUANT", "W8A8_PTQ4DIT", "W4A8_QDIT", "W8A8_VIDITQ", "W8A8_MINMAX", "W8A8_FP8_HTG",
           "W8A8_HTG_TOKEN"]


@dataclass(frozen=True)
class CalibrationSpec:
    """The default calibration run: the FP model's own sampling trajectories (used when no ``forward_loop`` or
    prompts-driven pipeline loop is given; ``seed`` also seeds the activation row sampling).

    Args:
        steps: sampler steps per trajectory (calibration timesteps), at most the model's training timesteps.
        samples: trajectories (class labels or caption rows, cycled).
        cfg_scale: classifier-free guidance scale of the trajectories.
        seed: the noise seed.
        scheduler: a diffusers scheduler class to sample with (``ddpm``, ``ddim``, ``dpmsolver``); None: the
            model's own. The training schedule is always the model's.
    """

    steps: int = 100
    samples: int = 16
    cfg_scale: float = 3.0
    seed: int = 0
    scheduler: SchedulerName | None = None

    def __post_init__(self) -> None:
        for name in ("steps", "samples", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < (0 if name == "seed" else 1):
                raise DitqError(f"CalibrationSpec.{name} must be an integer >= {0 if name == 'seed' else 1}, "
                                f"got {value!r}")
        if isinstance(self.cfg_scale, bool) or not isinstance(self.cfg_scale, (int, float)) or self.cfg_scale < 0:
            raise DitqError(f"CalibrationSpec.cfg_scale must be a number >= 0, got {self.cfg_scale!r}")
        if self.scheduler is not None and self.scheduler not in get_args(SchedulerName):
            raise DitqError(f"CalibrationSpec.scheduler must be None or one of {', '.join(get_args(SchedulerName))}, "
                            f"got {self.scheduler!r}")


@dataclass(frozen=True)
class QuantConfig:
    """Everything that decides a recipe: the method and its options, bit widths, weight blocks, the calibration run.

    Args:
        method: a registered method config (``HTGConfig(groups="auto")``, ``SmoothQuantConfig(alpha=0.8)``, ...).
        w_bits: weight bits, 8 or 4.
        a_bits: activation bits (8).
        w_block: weight scale block along the input channels; 0 = one scale per output channel.
        weight_clip: the weight clip search criterion of methods that search: ``"output"`` error or weight ``"mse"``.
        calibration: the default calibration run (``CalibrationSpec``).
        fmt: the quantizer grid, ``"int"`` or ``"fp8_e4m3"`` (W8A8-FP8: E4M3 per-channel weights and per-tensor
            per-group activations, scale = amax / 448; static methods only, 8-bit per channel).
        weight_rounding: ``"gptq"`` (default: error-compensating rounding on the calibration inputs' second
            moments, the codes stored in the recipe) or ``"nearest"``.
        bias_correction: per-group bias correction of the static Linears: minus each Linear's mean output error on
            the group's calibration inputs, folded into that group's biases (free at run time; default off: on top
            of GPTQ rounding it measured within the seed noise, docs/bias_correction.md).

    Example::

        config = ditq.QuantConfig(method=ditq.HTGConfig(groups="auto"), w_bits=8, a_bits=8, w_block=0,
                                  weight_clip="output", weight_rounding="gptq", bias_correction=False,
                                  calibration=ditq.CalibrationSpec(steps=100, samples=16, cfg_scale=3.0, seed=0))
    """

    version: ClassVar[int] = FORMAT_VERSION
    method: MethodConfig = field(default_factory=HTGConfig)
    w_bits: WeightBits = 8
    a_bits: ActivationBits = 8
    w_block: WeightBlock = 0
    weight_clip: WeightClip = "output"
    calibration: CalibrationSpec = field(default_factory=CalibrationSpec)
    fmt: QuantFormat = "int"
    weight_rounding: WeightRounding = "gptq"
    bias_correction: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.method, MethodConfig) or type(self.method) not in METHODS.values():
            raise DitqError(f"QuantConfig.method must be a method config such as HTGConfig(), got "
                            f"{type(self.method).__name__}")
        for name, allowed in (("w_bits", WeightBits), ("a_bits", ActivationBits), ("w_block", WeightBlock),
                              ("weight_clip", WeightClip), ("fmt", QuantFormat),
                              ("weight_rounding", WeightRounding)):
            value = getattr(self, name)
            if isinstance(value, bool) or value not in get_args(allowed):
                raise DitqError(f"QuantConfig.{name} must be one of {', '.join(map(str, get_args(allowed)))}, "
                                f"got {value!r}")
        if self.fmt != "int" and ((self.w_bits, self.w_block) != (8, 0) or not type(self.method).supports_fp8):
            raise DitqError(f"FP8 (fmt={self.fmt!r}, --format fp8) needs w_bits=8, w_block=0 and a static method "
                            f"(htg, smoothquant, ptq4dit, minmax), got W{self.w_bits} block {self.w_block} "
                            f"{self.method.name}; use fmt='int' (--format int) for those")
        if not isinstance(self.bias_correction, bool):
            raise DitqError(f"QuantConfig.bias_correction must be True or False, got {self.bias_correction!r}")
        if not isinstance(self.calibration, CalibrationSpec):
            raise DitqError(f"QuantConfig.calibration must be a CalibrationSpec, got {type(self.calibration).__name__}")

    @property
    def name(self) -> str:
        """``W8A8 htg``-style summary (``W8A8-FP8 htg`` for FP8)."""
        fp8 = "-FP8" if self.fmt == "fp8_e4m3" else ""
        return f"W{self.w_bits}A{self.a_bits}{fp8} {self.method.name}" + (f" block {self.w_block}" if self.w_block
                                                                            else "")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (tuples become lists) that ``from_dict`` reads back."""
        import json

        return json.loads(json.dumps({
            "version": self.version,
            "method": {"name": self.method.name, "params": self.method.params()},
            "w_bits": self.w_bits, "a_bits": self.a_bits, "w_block": self.w_block, "weight_clip": self.weight_clip,
            "calibration": dataclasses.asdict(self.calibration),
            **({"fmt": self.fmt} if self.fmt != "int" else {}),  # integer configs keep their old dicts
            "weight_rounding": self.weight_rounding,
            "bias_correction": self.bias_correction,
        }))

    @classmethod
    def from_dict(cls, body: dict[str, Any]) -> QuantConfig:
        """Rebuild a config from ``to_dict`` output; DitqError for another format version or unknown fields."""
        if not isinstance(body, dict) or body.get("version") != FORMAT_VERSION:
            got = body.get("version") if isinstance(body, dict) else type(body).__name__
            raise DitqError(f"a QuantConfig dict of format version {got!r} cannot be read by this ditq (version "
                            f"{FORMAT_VERSION}); re-create it with QuantConfig(...).to_dict()")
        try:
            method = body["method"]
            params = {k: tuple(v) if isinstance(v, list) else v for k, v in dict(method.get("params", {})).items()}
            return cls(method=method_config(str(method["name"]), **params), w_bits=body["w_bits"],
                       a_bits=body["a_bits"], w_block=body["w_block"], weight_clip=body["weight_clip"],
                       calibration=CalibrationSpec(**body["calibration"]), fmt=body.get("fmt", "int"),
                       # dicts from before these fields: nearest rounding, no bias correction
                       weight_rounding=body.get("weight_rounding", "nearest"),
                       bias_correction=body.get("bias_correction", False))
        except (KeyError, TypeError, AttributeError) as err:
            raise DitqError(f"malformed QuantConfig dict (bad or missing field {err}); "
                            "write it with QuantConfig.to_dict()") from err

    # -- the bridge to the calibration internals ----------------------------------------------------------------
    def calib_config(self, *, progress: bool = True, num_train_timesteps: int | None = None) -> CalibConfig:
        """The internal ``CalibConfig`` of this config (``progress``: show a progress bar)."""
        from ditq.calibration.calibrate import CalibConfig

        c = self.calibration
        if num_train_timesteps is not None and c.steps > num_train_timesteps:
            raise DitqError(f"calibration steps {c.steps} is more than the model's {num_train_timesteps} training "
                            f"timesteps; use CalibrationSpec(steps <= {num_train_timesteps})")
        return CalibConfig(steps=c.steps, samples=c.samples, cfg_scale=float(c.cfg_scale), seed=c.seed,
                           scheduler=c.scheduler, w_bits=self.w_bits, a_bits=self.a_bits, w_block=self.w_block,
                           weight_clip=self.weight_clip, fmt=self.fmt, weight_rounding=self.weight_rounding,
                           bias_correction=self.bias_correction, progress=progress)


def own_calibration(method: MethodConfig) -> CalibrationSpec:
    """The calibration run a method's paper uses (its ``calibration_defaults``), else the ditq default."""
    own = type(method).calibration_defaults
    return CalibrationSpec(**{k: own[k] for k in ("steps", "samples") if k in own})


def _preset(method: MethodConfig, w_bits: int = 8, fmt: str = "int") -> QuantConfig:
    return QuantConfig(method=method, w_bits=w_bits, calibration=own_calibration(method),  # type: ignore[arg-type]
                       fmt=fmt)  # type: ignore[arg-type]


#: HTG (timestep-grouped shift + smoothing), INT8 weights and activations, groups at the knee of the cost curve
#: or one per 16 calibration timesteps, whichever is more (6 at the default calibration; FP8 and per-token: the knee),
#: a static block-Hadamard rotation (64) before the quantizers where the criterion prefers it (not with FP8).
W8A8_HTG = _preset(HTGConfig(groups="auto"))
#: HTG with INT4 per-output-channel weights (TensorRT builds INT4 weights as W4A16).
W4A8_HTG = _preset(HTGConfig(groups="auto"), w_bits=4)
#: SmoothQuant baseline at full strength (one alpha searched by model-output SQNR, every site smoothed, one group).
W8A8_SMOOTHQUANT = _preset(SmoothQuantConfig(alpha="search", explicit=True))
#: PTQ4DiT salience balancing (one group; its paper's 25 steps x 32 samples).
W8A8_PTQ4DIT = _preset(PTQ4DiTConfig())
#: Q-DiT group-wise W4A8 with evolutionary group sizes (dynamic activations: ONNX Runtime / torch only).
W4A8_QDIT = _preset(QDiTConfig(), w_bits=4)
#: ViDiT-Q (run-time per-token activation scales, rotation, mixed precision; exported in TensorRT's Q/DQ form).
W8A8_VIDITQ = _preset(ViDiTQConfig())
#: Min-max baseline (one group, no shift, no smoothing).
W8A8_MINMAX = _preset(MinMaxConfig())
#: HTG with FP8 E4M3 weights (per channel) and activations (per tensor, per timestep group): Hopper/Ada's format.
W8A8_FP8_HTG = _preset(HTGConfig(groups="auto"), fmt="fp8_e4m3")
#: HTG's groups, shifts, smoothing and GPTQ weights with per-token activation scales computed at run time (not
#: static: a ReduceMax per GEMM input; exported as constant-scale Q/DQ around a row rescale, TensorRT's form).
W8A8_HTG_TOKEN = _preset(HTGConfig(groups="auto", act="token"))

PRESETS: dict[str, QuantConfig] = {
    "W8A8_HTG": W8A8_HTG, "W4A8_HTG": W4A8_HTG, "W8A8_SMOOTHQUANT": W8A8_SMOOTHQUANT, "W8A8_PTQ4DIT": W8A8_PTQ4DIT,
    "W4A8_QDIT": W4A8_QDIT, "W8A8_VIDITQ": W8A8_VIDITQ, "W8A8_MINMAX": W8A8_MINMAX, "W8A8_FP8_HTG": W8A8_FP8_HTG,
    "W8A8_HTG_TOKEN": W8A8_HTG_TOKEN,
}


def preset(name: str) -> QuantConfig:
    """A named preset (case-insensitive: ``preset("w8a8_htg")``); DitqError naming the choices otherwise."""
    key = str(name).upper().replace("-", "_")
    if key not in PRESETS:
        raise DitqError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[key]
