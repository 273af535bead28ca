from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ditq.artifacts.outputs import staging_dir
from ditq.cli.args import (
    CALIBRATION_DEFAULTS,
    SCHEDULER_CONFIG_HELP,
    UsageError,
    check_groups_fit_steps,
    defaults_help,
    float_range,
    groups_arg,
    positive_int,
    sampling_args,
    set_help,
)

# kept in sync with ditq.calibration.methods by a test, without importing torch here
METHODS = ("htg", "minmax", "smoothquant", "ptq4dit", "qdit", "viditq")
# the named presets of ditq.config (kept here so `ditq --help` imports no torch; a test pins the two lists)
PRESETS = ("W8A8_HTG", "W4A8_HTG", "W8A8_SMOOTHQUANT", "W8A8_PTQ4DIT", "W4A8_QDIT", "W8A8_VIDITQ", "W8A8_MINMAX",
           "W8A8_FP8_HTG", "W8A8_HTG_TOKEN")
FORMATS = {"int": "int", "fp8": "fp8_e4m3"}  # --format -> QuantConfig.fmt
DEFAULT_STEPS, DEFAULT_SAMPLES = CALIBRATION_DEFAULTS[""]["steps"], CALIBRATION_DEFAULTS[""]["samples"]


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="a local diffusers DiT or PixArt directory, or 'demo'")
    p.add_argument("--scheduler-config", default=None, metavar="PATH", help=SCHEDULER_CONFIG_HELP)
    p.add_argument("-o", "--output", required=True, help="recipe directory to write")
    p.add_argument("--preset", default=None, type=str.upper, choices=PRESETS, metavar="NAME",
                   help=f"a named QuantConfig ({', '.join(PRESETS)}): method, bits and calibration run; the "
                        "flags below override its fields (Python: ditq.<NAME>)")
    p.add_argument("--method", default=None, choices=METHODS, help="default: htg, or the preset's")
    p.add_argument("--groups", type=groups_arg, default="auto", help="number of timestep groups, or 'auto' (htg)")
    p.add_argument("--samples", type=positive_int, default=None,
                   help=f"samples per calibration run (default: {defaults_help('samples')})")
    sampling_args(p, steps=100)
    p.set_defaults(steps=None)  # the method's own calibration steps (CALIBRATION_DEFAULTS)
    set_help(p, "--steps", f"calibration sampler steps, at most the model's training timesteps (default: "
                           f"{defaults_help('steps')})")
    p.add_argument("--w-bits", type=int, choices=(8, 4), default=None,
                   help="weight bits (default: 8, or the preset's)")
    p.add_argument("--w-block", type=int, choices=(0, 32, 64, 128), default=None,
                   help="weight block along the input channels; 0: per output channel (default: 0, or the preset's)")
    p.add_argument("--format", dest="fmt", choices=tuple(FORMATS), default=None,
                   help="quantizer grid: int (INT8/INT4) or fp8 (W8A8-FP8: E4M3 per-channel weights and per-tensor "
                        "per-group activations, Hopper/Ada; static methods, --w-bits 8) (default: int, or the "
                        "preset's)")
    p.add_argument("--alpha", type=float_range(0.0, 1.0), default=None, help="smoothing exponent (smoothquant, viditq)")
    p.add_argument("--weight-clip", choices=("output", "mse"), default=None,
                   help="weight clip search criterion of htg/ptq4dit/qdit/viditq: output error (H-weighted) or "
                        "weight MSE (default: output, or the preset's)")
    p.add_argument("--weight-rounding", choices=("nearest", "gptq"), default=None,
                   help="weight rounding: nearest, or gptq (error-compensating, on the calibration inputs; the codes "
                        "are stored in the recipe) (default: gptq, or the preset's)")
    p.add_argument("--bias-correction", action=argparse.BooleanOptionalAction, default=None,
                   help="per-group bias correction of the static Linears: their mean output error on the calibration "
                        "inputs, folded into each group's biases (default: off, or the preset's)")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="a method option, e.g. --param population=20 for qdit (repeatable; values parsed as JSON)")
    p.add_argument("--force", action="store_true", help="replace an existing output directory")


def check_args(args: argparse.Namespace) -> None:
    check_groups_fit_steps(args, args.method or preset_method(args.preset))


def preset_method(preset: str | None) -> str:
    """The method of a preset name (``W8A8_HTG`` -> ``htg``) without importing the configs; htg without one."""
    return preset.rsplit("_", 1)[1].lower() if preset else "htg"


def method_params(args: argparse.Namespace) -> dict[str, Any]:
    """The method options from --groups, --alpha and --param KEY=VALUE (values as JSON, else strings)."""
    from ditq.errors import DitqError

    params: dict[str, Any] = {}
    if args.method == "htg":
        params["groups"] = args.groups
    elif args.groups not in ("auto", 1):
        raise DitqError(f"--groups applies to --method htg; {args.method} always uses one group")
    if args.alpha is not None:
        if args.method not in ("smoothquant", "viditq"):
            raise DitqError(f"--alpha applies to --method smoothquant or viditq, not {args.method}; "
                            "htg searches its alphas (--param alphas=[...])")
        params["alpha"] = args.alpha
    for item in args.param:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise DitqError(f"--param takes KEY=VALUE, got {item!r}")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        params[key.replace("-", "_")] = tuple(value) if isinstance(value, list) else value
    return params


def quant_config(args: argparse.Namespace) -> Any:
    """The ``QuantConfig`` of the flags: ``--preset`` (default: the ditq defaults, htg) with every flag given
    overriding its field, so ``ditq calibrate`` and ``ditq.calibrate`` build the same object."""
    from dataclasses import replace

    from ditq.calibration.methods import method_config
    from ditq.config import CalibrationSpec, QuantConfig, own_calibration, preset

    base = preset(args.preset) if args.preset else None
    args.method = args.method or (base.method.name if base else "htg")
    params = method_params(args)
    if base is not None and base.method.name == args.method:
        method = replace(base.method, **params) if params else base.method
    else:
        method = method_config(args.method, **params)
    own = base.calibration if base is not None and base.method.name == args.method else own_calibration(method)
    calibration = CalibrationSpec(steps=args.steps if args.steps is not None else own.steps,
                                  samples=args.samples if args.samples is not None else own.samples,
                                  cfg_scale=args.cfg, seed=args.seed, scheduler=args.scheduler)
    fields = {"w_bits": args.w_bits, "w_block": args.w_block, "weight_clip": args.weight_clip,
              "weight_rounding": args.weight_rounding, "bias_correction": args.bias_correction,
              "fmt": FORMATS[args.fmt] if args.fmt else None}
    start = base if base is not None else QuantConfig(method=method)
    return replace(start, method=method, calibration=calibration,
                   **{k: v for k, v in fields.items() if v is not None})


def run(args: argparse.Namespace) -> int:
    from ditq.api import calibrate
    from ditq.models.loading import load_model

    config = quant_config(args)
    steps = config.calibration.steps
    out = Path(args.output)
    with staging_dir(out, kind="ditq.recipe", force=args.force,
                     inputs=[p for p in (args.model, args.scheduler_config) if p not in (None, "demo")]) as tmp:
        model = load_model(args.model, scheduler=args.scheduler_config)
        if steps > model.num_train_timesteps:
            raise UsageError(f"--steps {steps} is more than the model's {model.num_train_timesteps} training "
                             f"timesteps; use --steps <= {model.num_train_timesteps}")
        recipe = calibrate(model, config, progress=not args.quiet)
        recipe.write(tmp)
    dynamic = ("  dynamic activations (ONNX Runtime / torch only)" if recipe.float_quantized_linears else
               "  dynamic activations (per token: run-time rescale around constant Q/DQ)" if recipe.dynamic_activations
               else "")
    c = config.calibration
    fp8 = "-FP8" if config.fmt == "fp8_e4m3" else ""
    print(f"recipe: {out}  method={recipe.method}  W{config.w_bits}A{config.a_bits}{fp8}"
          f"{f' block {config.w_block}' if config.w_block else ''}"
          f"{f'  weights={recipe.weight_rounding}' if recipe.weight_rounding != 'nearest' else ''}"
          f"{'  bias-corrected' if recipe.bias_correction else ''}"
          f"  groups={recipe.num_groups}  "
          f"steps={c.steps}  samples={c.samples}  "
          f"intervals={[g.interval for g in recipe.groups]}  ({recipe.calibration['seconds']:.1f} s){dynamic}")
    return 0
