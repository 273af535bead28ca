"""``ditq bench attribute``: where a recipe's error comes from (issue 13, item 1).

Teacher-forced on the FP sampling trajectory (the FP model sampled once; every model call's ``(x_t, t, cond)`` and
FP output recorded, as ``bench quality``'s per-step SQNR does), each timestep is run through the recipe's folded
model of that timestep's group (``runtime.backends.fake_quant.group_denoiser``: exact in float) with chosen Linears
swapped for their fake-quantized form (the very ``QLinear`` modules the fake-quant backend builds):

- per site (the input a set of Linears shares): only that site quantized (``only``), its weights only (``weight``),
  its input only (``act``), and every site but that one (``loo``: reported as the dB gained by leaving it FP);
- the same ``only`` / ``loo`` per site kind (qkv, out-proj, fc1, fc2, ...) and per block, measured, not summed;
- all sites, all weights only, all inputs only, and nothing (the fold's float floor).

Errors are noise ratios ``||out - ref||^2 / ||ref||^2`` of the model output against the FP output (``core.metrics``),
averaged over the timesteps of a group (or of the run) and shown as SQNR in dB. For the top sites it then measures
which tokens and channels carry the input's quantization error energy ``||Q(x) - x||^2`` and the outlier ratios
max/median of the per-token and per-channel absolute maxima.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import shlex
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ditq.core.metrics import noise_ratio, ratio_db
from ditq.core.sites import swapped_modules
from ditq.core.threads import torch_threads
from ditq.errors import DitqError

log = logging.getLogger(__name__)

TINY = "tiny"  # model name: a seeded tiny DiT written into the output directory (tests, smoke runs)
KIND = "ditq.bench.attribute"
# friendly names of the site kinds (the site name without its block prefix); others keep their own name
KIND_NAMES = {"attn1.qkv": "qkv", "attn1.to_out.0": "out-proj", "ff.net.0.proj": "fc1", "ff.net.2": "fc2",
              "attn2.to_q": "cross-q", "attn2.kv": "cross-kv", "attn2.to_out.0": "cross-out-proj"}
TOP_FRACTION = 0.01  # the "top 1 %" of tokens and channels


@dataclass(frozen=True)
class AttributeConfig:
    model: str | None = None  # "demo", "tiny" or a model dir; None: "demo", or the recipe's model with ``recipe``
    recipe: str | None = None  # a recipe directory from ``ditq calibrate``; None: calibrate ``method`` here
    method: str = "htg"
    params: dict[str, Any] = field(default_factory=dict)  # method options (groups, alphas, ...)
    w_bits: int = 8
    w_block: int = 0
    fmt: str = "int"
    calib_steps: int = 25
    calib_samples: int = 8
    calib_seed: int = 1  # != seed: calibration never sees the evaluation noise
    steps: int = 25  # DDPM steps of the FP trajectory
    images: int = 4  # images sampled (the model is called on them and their CFG twins)
    stride: int = 1  # evaluate every stride-th step of the trajectory
    cfg_scale: float = 3.0
    seed: int = 0
    top_sites: int = 3  # sites whose tokens and channels are examined
    target: str = "eps"  # the error of the model output (eps), or of the clean-image estimate it implies (x0)
    plots: bool = True
    threads: int | None = None
    progress: bool = True  # tqdm bars

    def __post_init__(self) -> None:
        if min(self.steps, self.images, self.stride, self.calib_steps, self.calib_samples) < 1:
            raise DitqError(f"--steps, --images, --stride, --calib-steps and --calib-samples must be >= 1, got "
                            f"{self.steps}, {self.images}, {self.stride}, {self.calib_steps}, {self.calib_samples}")
        if self.target not in ("eps", "x0"):
            raise DitqError(f"--target must be eps or x0, got {self.target!r}")
        if self.top_sites < 0:
            raise DitqError(f"--top must be >= 0, got {self.top_sites}")

    def command(self, out: Path | str = "OUT") -> str:
        """The ``ditq bench attribute`` line that reruns this configuration into ``out``."""
        argv = ["ditq", "bench", "attribute"]
        if self.model is not None:
            argv += ["--model", self.model]
        if self.recipe is not None:
            argv += ["--recipe", self.recipe]
        else:
            argv += ["--method", self.method, "--w-bits", str(self.w_bits)]
            argv += ["--w-block", str(self.w_block)] if self.w_block else []
            argv += ["--format", "fp8"] if self.fmt == "fp8_e4m3" else []
            for k, v in self.params.items():
                argv += ["--groups", str(v)] if k == "groups" else [
                    "--param", f"{k}={_json(v)}"]
            argv += ["--calib-steps", str(self.calib_steps), "--calib-samples", str(self.calib_samples),
                     "--calib-seed", str(self.calib_seed)]
        argv += ["--steps", str(self.steps), "--images", str(self.images), "--stride", str(self.stride),
                 "--cfg", str(self.cfg_scale), "--seed", str(self.seed), "--top", str(self.top_sites)]
        argv += ["--target", self.target] if self.target != "eps" else []
        argv += ["--threads", str(self.threads)] if self.threads else []
        return shlex.join([*argv, "-o", str(out)])


def _json(v: Any) -> str:
    import json

    return json.dumps(list(v) if isinstance(v, tuple) else v, separators=(",", ":"))


# -- the run --------------------------------------------------------------------------------------------------------
def run_attribution(out: Path, config: AttributeConfig = AttributeConfig(), *, force: bool = False,
                    progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Measure and write ``attribution.json``, ``attribution.md`` and (with matplotlib) ``attribution.png`` into
    ``out`` (all-or-nothing); returns the JSON body."""
    from ditq.artifacts import write_json
    from ditq.artifacts.outputs import staging_dir

    say = progress or (lambda msg: log.info("%s", msg))
    inputs = [p for p in (config.recipe, config.model) if p is not None and p not in ("demo", TINY)]
    with torch_threads(config.threads), staging_dir(Path(out), kind=KIND, force=force, inputs=inputs) as tmp:
        model, recipe = _model_and_recipe(config, tmp, say)
        result = _jsonable(attribute(model, recipe, config, say))
        result["command"] = config.command(out)
        if config.plots:
            result["plot"] = write_plot(result, tmp / "attribution.png")
        write_json(tmp / "attribution.json", result)
        (tmp / "attribution.md").write_text(format_markdown(result))
    return result


def _model_and_recipe(config: AttributeConfig, root: Path, say: Callable[[str], None]) -> tuple[Any, Any]:
    from ditq.models.loading import check_recipe_model, load_model

    if config.recipe is not None:
        from ditq.runtime.backends.fake_quant import open_recipe

        recipe, model, _ = open_recipe(Path(config.recipe), None)
        if config.model is not None:
            model = load_model(config.model, expected_scheduler=recipe.scheduler_config)
            check_recipe_model(model, recipe, Path(config.recipe))
        return model, recipe
    if config.model == TINY:
        from ditq.models.tiny import save_tiny_model_dir

        model = load_model(save_tiny_model_dir(root / "model"))
    else:
        model = load_model(config.model or "demo")
    from ditq.calibration.calibrate import CalibConfig, calibrate
    from ditq.calibration.methods import method_config

    say(f"calibrating {config.method} W{config.w_bits}A8 ({config.calib_steps} steps x {config.calib_samples} "
        "samples)")
    recipe = calibrate(model, method_config(config.method, **config.params), CalibConfig(
        steps=config.calib_steps, samples=config.calib_samples, cfg_scale=config.cfg_scale, seed=config.calib_seed,
        w_bits=config.w_bits, w_block=config.w_block, fmt=config.fmt, progress=config.progress))
    recipe.write(root / "recipe")
    return model, recipe


@dataclass
class _Unit:
    """A set of Linears measured together: a site, a site kind or a block."""

    name: str
    linears: tuple[str, ...]


class _GroupModel:
    """One timestep group: the folded FP denoiser (its site Linears are unquantized ``QLinear``s) and, per Linear,
    the fully fake-quantized ``QLinear`` of the fake-quant backend plus its weight-only and input-only copies."""

    def __init__(self, model: Any, recipe: Any, group_id: int, linears: list[str]) -> None:
        from ditq.runtime.backends.fake_quant import group_denoiser

        self.den = group_denoiser(model, recipe, group_id, quantize=False)
        quantized = dict(group_denoiser(model, recipe, group_id).m.named_modules())
        self.modules = dict(self.den.m.named_modules())
        self.full, self.weight, self.act = {}, {}, {}
        for lin in linears:
            q = quantized[lin]
            self.full[lin] = q
            # the weight-only and input-only copies keep the uncorrected bias: a recipe's bias correction
            # compensates both quantizers together
            self.weight[lin] = w = copy.deepcopy(q)  # weights quantized, input float
            w.act_scale, w.dynamic_group, w.bias = None, None, self.modules[lin].bias
            self.act[lin] = a = copy.deepcopy(q)  # input quantized, weights float (the folded, rotated FP weight)
            a.weight, a.bias = self.modules[lin].weight, self.modules[lin].bias

    def swapped(self, replacements: Mapping[str, nn.Module]) -> contextlib.AbstractContextManager[None]:
        return swapped_modules(self.modules, replacements)

    def noise(self, inp: tuple[torch.Tensor, torch.Tensor, Any], ref: torch.Tensor,
              replacements: Mapping[str, nn.Module], view: Callable[[torch.Tensor], torch.Tensor]) -> float:
        """The noise ratio of ``view(output)`` against ``ref`` with ``replacements`` swapped in."""
        with self.swapped(replacements):
            return noise_ratio(view(self.den.predict(*inp)), ref)


def site_kind(site: str) -> str:
    """``transformer_blocks.3.attn1.qkv`` -> ``qkv`` (the site name without its block, by its friendly name)."""
    parts = site.split(".")
    rest = ".".join(parts[2:]) if parts[0] == "transformer_blocks" and len(parts) > 2 else site
    return KIND_NAMES.get(rest, rest)


def site_block(site: str) -> str:
    parts = site.split(".")
    return ".".join(parts[:2]) if parts[0] == "transformer_blocks" and len(parts) > 2 else "other"


@torch.no_grad()
def attribute(model: Any, recipe: Any, config: AttributeConfig,
              say: Callable[[str], None] = lambda m: None) -> dict[str, Any]:
    """The measurements (the ``attribution.json`` body) of ``recipe`` on ``model``."""
    from tqdm.auto import tqdm

    from ditq.core.sampler import make_scheduler
    from ditq.testbed.scoring import SamplingSpec, fp_reference

    started = time.perf_counter()
    sites = [s for s in recipe.sites]
    if not sites:
        raise DitqError("the recipe quantizes no site; nothing to attribute")
    linears = [lin for s in sites for lin in s.linears]
    kinds: dict[str, list[str]] = {}
    blocks: dict[str, list[str]] = {}
    for s in sites:
        kinds.setdefault(site_kind(s.name), []).extend(s.linears)
        blocks.setdefault(site_block(s.name), []).extend(s.linears)
    units = {"site": [_Unit(s.name, tuple(s.linears)) for s in sites],
             "kind": [_Unit(k, tuple(v)) for k, v in kinds.items()],
             "block": [_Unit(b, tuple(v)) for b, v in blocks.items()]}

    say(f"FP trajectory: {config.steps} DDPM steps, {config.images} images, CFG {config.cfg_scale}")
    labels = torch.arange(config.images) % model.num_conditions
    ref = fp_reference(model, labels, SamplingSpec(steps=config.steps, cfg_scale=config.cfg_scale, seed=config.seed))
    picks = list(range(0, len(ref.inputs), config.stride))
    timesteps = [ref.timesteps[i] for i in picks]
    step_groups = [recipe.group_of(t) for t in timesteps]
    say(f"building the {recipe.num_groups} group model(s) of the {recipe.method} recipe")
    groups = {g: _GroupModel(model, recipe, g, linears) for g in sorted(set(step_groups))}

    alphas = make_scheduler(model.scheduler_config).alphas_cumprod.double() if config.target == "x0" else None
    n = len(picks)
    totals: dict[str, list[float]] = {k: [] for k in ("none", "all", "weight", "act")}
    per: dict[str, dict[str, list[list[float]]]] = {
        level: {m: [[0.0] * n for _ in us] for m in (("only", "weight", "act", "loo") if level == "site"
                                                    else ("only", "loo"))}
        for level, us in units.items()}
    bar = tqdm(total=n, desc="attribute", disable=not config.progress, leave=False)
    for j, i in enumerate(picks):
        gm = groups[step_groups[j]]
        inp = ref.inputs[i]
        view = _target_view(config.target, inp, alphas)
        out = view(ref.outputs[i])

        def nz(repl: Mapping[str, nn.Module]) -> float:
            return gm.noise(inp, out, repl, view)  # noqa: B023 (called inside this iteration only)

        totals["none"].append(nz({}))
        totals["all"].append(nz(gm.full))
        totals["weight"].append(nz(gm.weight))
        totals["act"].append(nz(gm.act))
        for level, us in units.items():
            for u, unit in enumerate(us):
                mine = set(unit.linears)
                per[level]["only"][u][j] = nz({lin: gm.full[lin] for lin in unit.linears})
                per[level]["loo"][u][j] = nz({lin: q for lin, q in gm.full.items() if lin not in mine})
                if level == "site":
                    per[level]["weight"][u][j] = nz({lin: gm.weight[lin] for lin in unit.linears})
                    per[level]["act"][u][j] = nz({lin: gm.act[lin] for lin in unit.linears})
        bar.update(1)
    bar.close()

    group_steps = {g.group_id: [j for j in range(n) if step_groups[j] == g.group_id] for g in recipe.groups}

    def summary(ratios: list[float]) -> dict[str, Any]:
        return {"noise_ratio": _mean(ratios), "sqnr_db": _db(_mean(ratios)), "per_step_db": [_db(x) for x in ratios],
                "groups": {str(g): _db(_mean([ratios[j] for j in js])) for g, js in group_steps.items() if js}}

    total = {k: summary(v) for k, v in totals.items()}
    all_nr = total["all"]["noise_ratio"]
    levels: dict[str, list[dict[str, Any]]] = {}
    for level, us in units.items():
        rows = []
        only_sum = sum(_mean(r) for r in per[level]["only"]) or math.inf
        for u, unit in enumerate(us):
            only, loo = per[level]["only"][u], per[level]["loo"][u]
            row: dict[str, Any] = {"name": unit.name, "only_db": _db(_mean(only)), "only_noise_ratio": _mean(only),
                                   "share": _mean(only) / only_sum,
                                   "loo_db": _db(_mean(loo)), "loo_gain_db": _db(_mean(loo)) - _db(all_nr),
                                   "groups": {str(g): {"only_db": _db(_mean([only[j] for j in js])),
                                                       "loo_gain_db": _db(_mean([loo[j] for j in js]))
                                                       - total["all"]["groups"][str(g)]}
                                              for g, js in group_steps.items() if js}}
            if level == "site":
                w, a = _mean(per[level]["weight"][u]), _mean(per[level]["act"][u])
                row.update(kind=site_kind(unit.name), block=site_block(unit.name), weight_db=_db(w), act_db=_db(a),
                           weight_share=w / (w + a) if w + a > 0 else math.nan,
                           only_db_per_step=[_db(r) for r in only])
            rows.append(row)
        rows.sort(key=lambda r: -r["only_noise_ratio"])
        levels[level] = rows

    w_sum = sum(r["only_noise_ratio"] * r["weight_share"] for r in levels["site"] if math.isfinite(r["weight_share"]))
    top = [r["name"] for r in levels["site"][:config.top_sites]]
    say(f"tokens and channels of the top {len(top)} site(s): {', '.join(top)}")
    concentration = _concentration(groups, ref, picks, step_groups, {s.name: s for s in sites}, top)
    return {
        "kind": KIND, "command": config.command(), "config": _jsonable(asdict(config)),
        "model": {"source": "tiny (seeded, saved in model/)" if config.model == TINY else model.source,
                  "sha256": model.sha256,
                  "parameters": sum(p.numel() for p in model.transformer.parameters())},
        "recipe": {"method": recipe.method, "params": _jsonable(recipe.params), "w_bits": recipe.w_bits,
                   "a_bits": recipe.a_bits, "formats": list(recipe.formats),
                   "dynamic_activations": recipe.dynamic_activations, "source": config.recipe or "calibrated here",
                   "groups": [{"id": g.group_id, "interval": list(g.interval)} for g in recipe.groups]},
        "timesteps": timesteps, "step_groups": step_groups,
        "total": total,
        # model-level split: all weights alone vs all inputs alone, and the sum of the per-site splits
        "weight_vs_act": {"all_weights_db": total["weight"]["sqnr_db"], "all_inputs_db": total["act"]["sqnr_db"],
                          "weight_share": _share(total["weight"]["noise_ratio"], total["act"]["noise_ratio"]),
                          "weight_share_of_site_sums": w_sum / max(sum(r["only_noise_ratio"]
                                                                       for r in levels["site"]), 1e-30)},
        "sites": levels["site"], "kinds": levels["kind"], "blocks": levels["block"],
        "concentration": concentration, "seconds": round(time.perf_counter() - started, 1),
    }


def _target_view(target: str, inp: tuple[torch.Tensor, torch.Tensor, Any], alphas: torch.Tensor | None
                 ) -> Callable[[torch.Tensor], torch.Tensor]:
    """What the error is measured on: the eps output itself, or (``x0``) the clean-image estimate it implies,
    ``(x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)``: the final steps' eps errors shrink by sqrt(1 - abar_t)."""
    if target == "eps":
        return lambda eps: eps
    assert alphas is not None
    x, t = inp[0].double(), inp[1]
    a = alphas[t.round().long().clamp(0, alphas.numel() - 1)].view(-1, *[1] * (x.dim() - 1))
    return lambda eps: (x - (1 - a).sqrt() * eps.double()) / a.sqrt()


def _mean(xs: list[float]) -> float:
    return float(sum(xs) / len(xs)) if xs else math.nan


def _db(nr: float) -> float:
    return ratio_db(nr) if math.isfinite(nr) else math.nan


def _share(a: float, b: float) -> float:
    return a / (a + b) if a + b > 0 else math.nan


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and math.isfinite(value) and value:  # 5 significant digits keep the file small
        return float(f"{value:.5g}")
    return value


def quantizer_io(q: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """What a ``QLinear``'s input quantizer sees and returns for input ``x``: ``QLinear.quantizer_io``."""
    return q.quantizer_io(x)  # type: ignore[operator]


def top_share(energy: torch.Tensor, fraction: float = TOP_FRACTION) -> tuple[float, int]:
    """The share of ``energy``'s sum held by its largest ``ceil(fraction * n)`` entries, and that count."""
    k = max(1, math.ceil(fraction * energy.numel()))
    total = float(energy.sum())
    return (float(energy.flatten().topk(k).values.sum()) / total if total > 0 else math.nan), k


class _InputError:
    """A forward pre-hook on a quantized Linear accumulating where its input quantizer's error energy lies."""

    def __init__(self) -> None:
        self.tok_top = self.tok_total = self.signal = 0.0
        self.tok_k = self.tokens = 0
        self.tok_ratio: list[float] = []
        self.ch_energy: torch.Tensor | None = None
        self.ch_amax: torch.Tensor | None = None

    def __call__(self, q: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        x, xq = quantizer_io(q, args[0])
        x2 = x.reshape(-1, x.shape[-1]).float()
        err = (xq.reshape(-1, x.shape[-1]).float() - x2).square()
        tok = err.sum(-1)  # per token (row of every image and CFG twin)
        self.tok_k, self.tokens = max(1, math.ceil(TOP_FRACTION * tok.numel())), tok.numel()
        self.tok_top += float(tok.topk(self.tok_k).values.sum())
        self.tok_total += float(tok.sum())
        self.signal += float(x2.square().sum())
        amax_tok = x2.abs().amax(-1)
        self.tok_ratio.append(float(amax_tok.max() / amax_tok.median().clamp_min(1e-12)))
        ch, amax_ch = err.sum(0), x2.abs().amax(0)
        self.ch_energy = ch if self.ch_energy is None else self.ch_energy + ch
        self.ch_amax = amax_ch if self.ch_amax is None else torch.maximum(self.ch_amax, amax_ch)

    def row(self, site: str) -> dict[str, Any]:
        assert self.ch_energy is not None and self.ch_amax is not None
        ch_share, ch_k = top_share(self.ch_energy)
        amax = self.ch_amax
        return {"site": site, "tokens_per_call": self.tokens, "channels": int(amax.numel()),
                "top_tokens": self.tok_k,
                "top_tokens_error_share": self.tok_top / self.tok_total if self.tok_total > 0 else math.nan,
                "top_channels": ch_k, "top_channels_error_share": ch_share,
                "input_sqnr_db": _db(self.tok_total / max(self.signal, 1e-30)),
                "token_max_over_median": _mean(self.tok_ratio),
                "channel_max_over_median": float(amax.max() / amax.median().clamp_min(1e-12)),
                "worst_channels": amax.topk(min(3, amax.numel())).indices.tolist()}


def _concentration(groups: dict[int, _GroupModel], ref: Any, picks: list[int], step_groups: list[int],
                   sites: dict[str, Any], top: list[str]) -> list[dict[str, Any]]:
    """For each site in ``top``: which tokens and channels of its input carry ``||Q(x) - x||^2``, and its outliers
    (per-token and per-channel absolute maxima, max over median), on the FP trajectory's activations."""
    rows = []
    for name in top:
        lin = sites[name].linears[0]  # the site's Linears share their input
        stats = _InputError()
        for j, i in enumerate(picks):
            gm = groups[step_groups[j]]
            q = gm.full[lin]  # the quantized Linear: its quantizer, fed the FP activation
            with gm.swapped({lin: q}):
                handle = q.register_forward_pre_hook(stats)
                try:
                    gm.den.predict(*ref.inputs[i])
                finally:
                    handle.remove()
        rows.append(stats.row(name))
    return rows


# -- the report -----------------------------------------------------------------------------------------------------
def _f(v: float, digits: int = 1) -> str:
    return "inf" if v == math.inf else ("nan" if not math.isfinite(v) else f"{v:.{digits}f}")


def format_markdown(r: dict[str, Any]) -> str:
    groups = r["recipe"]["groups"]
    gcols = [str(g["id"]) for g in groups]
    ghead = " | ".join(f"g{g['id']} [{g['interval'][0]},{g['interval'][1]}]" for g in groups)
    c = r["config"]
    lines = [
        "# Error attribution", "", "```", r["command"], "```", "",
        f"Model {r['model']['source']} ({r['model']['parameters']:,} parameters); recipe {r['recipe']['method']} "
        f"W{r['recipe']['w_bits']}A{r['recipe']['a_bits']} ({', '.join(r['recipe']['formats'])}), "
        f"{len(groups)} group(s), from {r['recipe']['source']}. Teacher-forced on the FP trajectory: DDPM "
        f"{c['steps']} steps, CFG {c['cfg_scale']}, {c['images']} images (+ CFG twins), every {c['stride']} step(s) "
        f"({len(r['timesteps'])} timesteps). SQNR vs FP (dB; higher is better) of "
        + ("the model output (eps)" if c.get("target", "eps") == "eps" else "the clean-image estimate x0 the eps "
           "output implies") + ", noise ratios "
        f"averaged over the timesteps of each column. {r['seconds']} s.", "",
        "## Totals", "",
        f"| quantized | all timesteps | {ghead} |", "|---|---|" + "---|" * len(groups),
    ]
    for key, label in (("all", "every site"), ("weight", "weights only"), ("act", "inputs only"),
                       ("none", "nothing (fold floor)")):
        t = r["total"][key]
        lines.append(f"| {label} | {_f(t['sqnr_db'])} | " + " | ".join(_f(t["groups"].get(g, math.nan))
                                                                       for g in gcols) + " |")
    worst = sorted(zip(r["total"]["all"]["per_step_db"], r["timesteps"]))[:3]
    lines += ["", "Worst timesteps, every site quantized: " + ", ".join(f"t={t:.0f}: {_f(db)} dB" for db, t in worst)
              + "."]
    wa = r["weight_vs_act"]
    lines += ["", f"Weight share of the error: {100 * wa['weight_share']:.0f} % (all weights alone vs all inputs "
              f"alone); {100 * wa['weight_share_of_site_sums']:.0f} % summed over the per-site splits.", ""]
    lines += ["## Sites (ranked by the error of that site alone)", "",
              "`only`: that site alone quantized; `share`: its part of the sum of `only` noise over sites; `W`/`A`: "
              "its weights / input alone; `LOO gain`: dB gained by leaving it FP with every other site quantized.",
              "",
              "| site | kind | only | share | W | A | LOO gain | " + " | ".join(f"only g{g}" for g in gcols) + " |",
              "|---|---|---|---|---|---|---|" + "---|" * len(gcols)]
    for s in r["sites"]:
        lines.append(f"| {s['name']} | {s['kind']} | {_f(s['only_db'])} | {100 * s['share']:.1f} % | "
                     f"{_f(s['weight_db'])} | {_f(s['act_db'])} | {_f(s['loo_gain_db'], 2)} | "
                     + " | ".join(_f(s["groups"].get(g, {}).get("only_db", math.nan)) for g in gcols) + " |")
    for level, title in (("kinds", "Site kinds"), ("blocks", "Blocks")):
        lines += ["", f"## {title} (measured: all sites of the {level[:-1]} together)", "",
                  "| " + level[:-1] + " | only | share | LOO gain | "
                  + " | ".join(f"LOO gain g{g}" for g in gcols) + " |", "|---|---|---|---|" + "---|" * len(gcols)]
        for k in r[level]:
            lines.append(f"| {k['name']} | {_f(k['only_db'])} | {100 * k['share']:.1f} % | {_f(k['loo_gain_db'], 2)} "
                         "| " + " | ".join(_f(k["groups"].get(g, {}).get("loo_gain_db", math.nan), 2)
                                           for g in gcols) + " |")
    if r["concentration"]:
        lines += ["", "## Tokens and channels (top sites)", "",
                  "Share of the site input's quantization error energy ||Q(x)-x||² carried by its top 1 % of tokens "
                  "and of channels (uniform would be ~1 %), and outliers: max / median of the per-token and "
                  "per-channel absolute maxima.", "",
                  "| site | input SQNR | top tokens (of) | their error share | top channels (of) | their error share "
                  "| token max/median | channel max/median | worst channels |", "|---|---|---|---|---|---|---|---|---|"]
        for t in r["concentration"]:
            lines.append(f"| {t['site']} | {_f(t['input_sqnr_db'])} | {t['top_tokens']} ({t['tokens_per_call']}) | "
                         f"{100 * t['top_tokens_error_share']:.1f} % | {t['top_channels']} ({t['channels']}) | "
                         f"{100 * t['top_channels_error_share']:.1f} % | {_f(t['token_max_over_median'])} | "
                         f"{_f(t['channel_max_over_median'])} | {t['worst_channels']} |")
    if r.get("plot"):
        lines += ["", f"![attribution]({r['plot']})"]
    return "\n".join(lines) + "\n"


def write_plot(r: dict[str, Any], path: Path) -> str | None:
    """A heatmap site x timestep of the one-at-a-time SQNR (dB) and bars of the leave-one-out gain per site kind;
    ``None`` (one log line) without matplotlib."""
    from ditq._deps import has_module

    if not has_module("matplotlib"):
        log.info("attribution plot skipped: matplotlib is not installed (pip install 'ditq[plot]')")
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = list(KIND_NAMES.values())
    sites = sorted(r["sites"], key=lambda s: (int(s["block"].rpartition(".")[2]) if s["block"] != "other" else -1,
                                              order.index(s["kind"]) if s["kind"] in order else 99, s["name"]))
    grid = torch.tensor([[min(v, 80.0) if math.isfinite(v) else 80.0 for v in s["only_db_per_step"]] for s in sites])
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 0.25 * len(sites) + 2.5), width_ratios=(3, 1))
    im = ax.imshow(grid.numpy(), aspect="auto", cmap="magma", interpolation="nearest")
    ts = r["timesteps"]
    ticks = list(range(0, len(ts), max(1, len(ts) // 10)))
    ax.set_xticks(ticks, [f"{ts[i]:.0f}" for i in ticks])
    ax.set_yticks(range(len(sites)), [s["name"].replace("transformer_blocks.", "b") for s in sites], fontsize=7)
    for j in range(1, len(ts)):
        if r["step_groups"][j] != r["step_groups"][j - 1]:
            ax.axvline(j - 0.5, color="cyan", linewidth=1)
    ax.set_xlabel("timestep (sampler order; cyan: group boundary)")
    ax.set_title(f"{r['recipe']['method']} W{r['recipe']['w_bits']}A{r['recipe']['a_bits']}: output SQNR with only "
                 "that site quantized (dB; dark = worse)")
    fig.colorbar(im, ax=ax, fraction=0.04)
    kinds = r["kinds"]
    bx.barh([k["name"] for k in kinds], [k["loo_gain_db"] for k in kinds], color="tab:blue")
    bx.invert_yaxis()
    bx.set_xlabel("dB gained leaving the kind in FP")
    bx.set_title(f"leave one kind out\n(all quantized: {_f(r['total']['all']['sqnr_db'])} dB)")
    bx.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path.name
