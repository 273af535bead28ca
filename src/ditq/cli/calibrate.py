from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ditq.cli.args import UsageError
from ditq.outputs import staging_dir


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
    fields = {"w_bits": args.w_bits, "w_block": args.w_block, "weight_clip": args.weight_clip}
    start = base if base is not None else QuantConfig(method=method)
    return replace(start, method=method, calibration=calibration,
                   **{k: v for k, v in fields.items() if v is not None})


def run(args: argparse.Namespace) -> int:
    from ditq.api import calibrate
    from ditq.models.dit import load_model

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
    dynamic = "  dynamic activations (ONNX Runtime / torch only)" if recipe.dynamic_activations else ""
    c = config.calibration
    print(f"recipe: {out}  method={recipe.method}  W{config.w_bits}A{config.a_bits}"
          f"{f' block {config.w_block}' if config.w_block else ''}  groups={recipe.num_groups}  "
          f"steps={c.steps}  samples={c.samples}  "
          f"intervals={[g.interval for g in recipe.groups]}  ({recipe.calibration['seconds']:.1f} s){dynamic}")
    return 0
