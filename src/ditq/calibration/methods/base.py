"""What every method sees (``Context``) and returns (``Solution``), the registry, and shared scale helpers."""

from __future__ import annotations

import contextlib
import logging
import re
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, TypeVar

import torch
from torch import nn

from ditq.artifacts.recipe import LinearSpec
from ditq.calibration.groups import Grouping
from ditq.calibration.stats import SiteStats
from ditq.core.metrics import noise_ratio, ratio_db
from ditq.core.quantizers import block_for, largest_pow2_divisor, rotate, scale_from_amax, search_act_scale
from ditq.core.sites import Site, swapped_modules
from ditq.core.threads import torch_threads
from ditq.errors import DitqError

log = logging.getLogger(__name__)


@dataclass
class Context:
    sites: list[Site]
    stats: dict[str, SiteStats]
    timesteps: list[int]  # the rows of every SiteStats, in sampler order
    weights: dict[str, list[torch.Tensor]]  # site -> weights [N, C] of the Linears reading it
    num_train_timesteps: int
    w_bits: int
    a_bits: int
    w_block: int = 0  # requested weight block (0: per output channel); block_for() resolves it per Linear
    weight_clip: str = "output"  # weight clip search criterion: "output" (H-weighted) or "mse"
    fmt: str = "int"  # quantizer grid of static Linears: "int" or "fp8_e4m3" (scales and searches use it)
    transformer: nn.Module | None = None  # the FP transformer (methods that evaluate the model: qdit, viditq)
    probes: list[tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]] = field(default_factory=list)  # x, t, cond
    # the caller's torch threads: solve() runs on one (its searches are many tiny GEMMs); a method's large passes
    # (the Fisher criterion's backward passes) take these back
    threads: int = 1
    progress: bool = False  # a method's long passes show a progress bar

    def default_spec(self, site: Site) -> LinearSpec:
        """The quantizer a Linear of ``site`` gets unless the method decides otherwise (static, per config)."""
        k = self.stats[site.name].ch_max.shape[1]
        return LinearSpec(w_bits=self.w_bits, w_block=block_for(self.w_block, k), a_bits=self.a_bits, fmt=self.fmt)

    def rows_of(self, grouping: Grouping, group_id: int) -> list[int]:
        index = {t: i for i, t in enumerate(self.timesteps)}
        return [index[t] for t in grouping.members(group_id)]


@dataclass
class Solution:
    grouping: Grouping
    shifts: dict[str, torch.Tensor]  # site -> [G, C]
    smooth: dict[str, torch.Tensor]  # site -> [C]
    act_scales: dict[str, torch.Tensor]  # site -> [G]
    alphas: dict[str, float | None]
    weight_clip_search: bool = True
    linear_specs: dict[str, LinearSpec] = field(default_factory=dict)  # overrides of Context.default_spec
    info: dict[str, Any] = field(default_factory=dict)  # what the method wants recorded (search traces, ...)
    # static sites whose scales are their groups' amax of a tensor the statistics do not bound (rotated inputs),
    # so far taken from the reservoir rows: calibrate() measures it exactly in a second run of the forward loop
    exact_range_sites: tuple[str, ...] = ()
    # the groups whose scales that second run replaces (None: every group; the others keep the reservoir's)
    exact_range_groups: tuple[int, ...] | None = None
    # True: calibrate() keeps the exact ranges only if the fake-quantized model then samples the calibration's own
    # trajectories closer to FP than with the reservoir ranges (calibrate._choose_by_sampling)
    exact_range_select: bool = False


@dataclass(frozen=True)
class MethodConfig:
    name: ClassVar[str] = ""
    needs_model: ClassVar[bool] = False  # solve() runs the model on Context.probes
    calibration_defaults: ClassVar[dict[str, int]] = {}  # the method's own calibration steps/samples, if any
    supports_fp8: ClassVar[bool] = True  # static per-tensor activations: FP8 E4M3 applies (not to dynamic methods)

    def solve(self, ctx: Context) -> Solution:
        raise NotImplementedError

    def params(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)


METHODS: dict[str, type[MethodConfig]] = {}
M = TypeVar("M", bound=type[MethodConfig])


def register_method(name: str) -> Callable[[M], M]:
    def deco(cls: M) -> M:
        cls.name = name
        METHODS[name] = cls
        return cls

    return deco


def method_config(name: str, **params: Any) -> MethodConfig:
    """Instantiate a registered method's config; unknown names and options are one-line errors."""
    if name not in METHODS:
        raise DitqError(f"unknown method {name!r}; choose one of {', '.join(sorted(METHODS))}")
    cls = METHODS[name]
    hints = _option_types(cls)
    for key, value in params.items():
        tp = hints.get(key)
        if tp is not None and not _matches(value, tp):
            raise DitqError(f"bad options for method {name!r}: {key} must be {_type_name(tp)}, got {value!r}")
    try:
        return cls(**params)
    except TypeError as err:
        raise DitqError(f"bad options for method {name!r}: {err}") from err


def _option_types(cls: type[MethodConfig]) -> dict[str, Any]:
    """A config's option annotations (dataclass fields, not ClassVars); {} if they do not resolve."""
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # an annotation this module cannot resolve: leave the checking to the dataclass
        return {}
    return {f.name: hints[f.name] for f in fields(cls) if f.name in hints}


def _matches(value: Any, tp: Any) -> bool:
    """Whether a parsed option value (JSON: bool, int, float, str, list/tuple, dict, None) fits annotation ``tp``;
    annotations it does not know pass (the dataclass's own checks still run)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in args)
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    if origin is typing.Literal:
        return value in args
    if origin in (tuple, list):
        if not isinstance(value, (tuple, list)):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(_matches(v, a) for v, a in zip(value, args))
        return not args or all(_matches(v, args[0]) for v in value)
    if origin is dict:
        return isinstance(value, dict)
    return True


def _type_name(tp: Any) -> str:
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string", type(None): "null"}
    if tp in names:
        return names[tp]
    plural = {bool: "booleans", int: "integers", float: "numbers", str: "strings"}
    if typing.get_origin(tp) in (tuple, list):
        item = (typing.get_args(tp) or (None,))[0]
        return "a list" + (f" of {plural[item]}" if item in plural else "")
    args = typing.get_args(tp)
    if args and all(a in names for a in args):
        return " or ".join(names[a] for a in args)
    return str(tp)


def folded_group_inputs(ctx: Context, site: Site, grouping: Grouping, shifts: torch.Tensor,
                        smooth: torch.Tensor) -> list[torch.Tensor]:
    """Per group g, the reservoir rows of ``site`` as its Linears see them after folding, ``(x - z_g) / s`` [n_g, C]."""
    st = ctx.stats[site.name]
    return [((st.reservoir[ctx.rows_of(grouping, g)].reshape(-1, st.reservoir.shape[-1]) - shifts[g]) / smooth).float()
            for g in range(len(grouping.segments))]


def folded_inputs(ctx: Context, site: Site, grouping: Grouping, shifts: torch.Tensor,
                  smooth: torch.Tensor) -> torch.Tensor:
    """The folded reservoir rows of ``site`` (``folded_group_inputs``), all groups [n, C]."""
    return torch.cat(folded_group_inputs(ctx, site, grouping, shifts, smooth))


def input_moments(inputs: torch.Tensor, rotation: int = 0) -> torch.Tensor:
    """``H = E[x^T x]`` [C, C] of a Linear's (rotated) input: what the output-aware weight clip search weighs."""
    x = input_factor(inputs, rotation)
    return x.T @ x


def input_factor(inputs: torch.Tensor, rotation: int = 0) -> torch.Tensor:
    """``F`` [n, C] with ``F^T F = E[x^T x]``: the (rotated) rows scaled by 1/sqrt(n)."""
    x = rotate(inputs, rotation)
    return x / max(x.shape[0], 1) ** 0.5


def pooled_range(st: SiteStats, rows: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    return st.ch_max[rows].amax(0), st.ch_min[rows].amin(0)


def folded_amax(st: SiteStats, rows: list[int], shift: torch.Tensor, smooth: torch.Tensor) -> float:
    """The exact amax of the folded input ``(x - shift) / smooth`` over the calibration rows ``rows`` (from the
    per-channel stats): an unrotated static site's activation range in one group."""
    hi, lo = pooled_range(st, rows)
    return float(torch.maximum(hi - shift, shift - lo).div(smooth).amax())


def act_scales_for(ctx: Context, site: Site, grouping: Grouping, shifts: torch.Tensor, smooth: torch.Tensor,
                   *, search: bool, absolute: bool = False, rotation: int = 0) -> tuple[torch.Tensor, float]:
    """Per-group activation scales of ``(x - z_g) / s``: exact amax from the stats, clip searched on the reservoir.

    ``rotation`` > 0: of ``((x - z_g) / s) @ R`` (block-Hadamard R, the weights ``W diag(s) R``); the per-channel
    stats do not bound a rotated tensor, so its amax is the reservoir's (the clip search only lowers it).
    Returns the scales [G] and the summed relative output error over groups (for comparing candidate ``s``).
    """
    st = ctx.stats[site.name]
    # the clip search weighs the output error with the folded (rotated) weights; the amax needs no weights
    weights = [rotate(w * smooth, rotation) for w in ctx.weights[site.name]] if search else []
    w_block = ctx.default_spec(site).w_block
    scales, total = [], 0.0
    for g in range(len(grouping.segments)):
        rows = ctx.rows_of(grouping, g)
        x = None
        if not rotation:
            amax = folded_amax(st, rows, shifts[g], smooth)
        else:
            x = rotate(((st.reservoir[rows].reshape(-1, st.reservoir.shape[-1]) - shifts[g]) / smooth).float(),
                       rotation)
            amax = float(x.abs().amax())
        if search:
            if x is None:
                x = (st.reservoir[rows].reshape(-1, st.reservoir.shape[-1]) - shifts[g]) / smooth
            scale, err = search_act_scale(x, weights, amax, a_bits=ctx.a_bits, w_bits=ctx.w_bits, w_block=w_block,
                                          fmt=ctx.fmt, absolute=absolute)
            total += err
        else:
            scale = float(scale_from_amax(amax, ctx.a_bits, ctx.fmt))
        scales.append(scale)
    return torch.tensor(scales, dtype=torch.float32), total


def check_rotation(method: str, rotation: int) -> None:
    if rotation < 0 or rotation & (rotation - 1) or rotation == 1:
        raise DitqError(f"{method} rotation must be 0 (off) or a power of two >= 2 (e.g. 64), got {rotation}")


def site_rotations(ctx: Context, rotation: int) -> dict[str, int]:
    """Per site, the block-Hadamard size to rotate its input with: ``rotation``, or the largest power of two
    dividing the site's channel count when that is smaller (logged); 0 when that is 1 (odd: skipped, logged)."""
    if rotation and ctx.fmt != "int":
        raise DitqError(f"rotation is for integer grids; got --format {ctx.fmt}: drop rotation or use --format int")
    out = {}
    for site in ctx.sites:
        k = ctx.stats[site.name].ch_max.shape[1]
        block = min(rotation, largest_pow2_divisor(k)) if rotation else 0
        if rotation and block < rotation:
            log.info("%s: %d channels: rotation block %d%s", site.name, k, block,
                     "" if block > 1 else " (no rotation)")
        out[site.name] = block if block > 1 else 0
    return out



@contextlib.contextmanager
def caller_threads(ctx: Context) -> typing.Iterator[None]:
    """Inside, torch runs on the caller's threads (``ctx.threads``): for a method's whole-model passes, which
    ``solve()``'s single thread would slow down."""
    with torch_threads(max(torch.get_num_threads(), ctx.threads)):
        yield


def pick_probes(ctx: Context, n_timesteps: int, batch: int) -> list[tuple[torch.Tensor, torch.Tensor, Any]]:
    """``n_timesteps`` of the recorded calibration calls (``Context.probes``), spread over the sampler's
    trajectory, and ``batch`` rows of each (conditional and unconditional rows alike): (x, t, cond) each."""
    from ditq.core.cond import select

    if ctx.transformer is None or not ctx.probes:
        raise DitqError("this method evaluates the model during calibration; give calibrate() the model and a "
                        "forward loop that calls it with (hidden_states, timestep=, <conditioning>=)")
    picks = torch.linspace(0, len(ctx.probes) - 1, min(n_timesteps, len(ctx.probes))).round().long().unique()
    out = []
    for i in picks.tolist():
        x, t, y = ctx.probes[i]
        rows = torch.linspace(0, x.shape[0] - 1, min(batch, x.shape[0])).round().long().unique()
        out.append((x[rows], t[rows], select(y, rows)))
    return out


# the evaluator keeps the FP hidden states entering each transformer block on its probes, so that a swap inside block
# i runs blocks i.. only, while they take at most this much memory (the patches DiT's 12 x 16 probes: 57 MB; DiT-XL/2
# at 256 px: 1.6 GB on 6 x 8 probes, 6.3 GB on 12 x 16, where it would score on the whole model)
BLOCK_CACHE_BYTES = 2 * 2**30
_BLOCK_NAME = re.compile(r"transformer_blocks\.(\d+)\.")


def block_index(name: str) -> int | None:
    """The transformer block a module or site name lies in (``transformer_blocks.3.attn1.to_q`` -> 3), or None."""
    found = _BLOCK_NAME.match(name)
    return None if found is None else int(found.group(1))


class ProbeEvaluator:
    """Output SQNR of the transformer, with some Linears swapped for quantized ones, on recorded calibration inputs.

    Picks ``n_timesteps`` calibration calls spread over the sampler's trajectory (``Context.probes``) and
    ``batch`` rows of each (conditional and unconditional rows alike); the reference is the FP output.
    ``state`` replaces the transformer's parameters first (a folded state: the same function, other weights) and
    ``pre`` adds the explicit pre-affines folding returned, keyed by site name. ``modules`` keeps the plain
    Linears (with ``state``'s weights) to build replacements from. ``skip_blocks``: keep the FP hidden states
    entering each transformer block on the probes (up to ``BLOCK_CACHE_BYTES``), so that a swap that changes only
    blocks ``i..`` runs those blocks only.
    """

    def __init__(self, ctx: Context, *, n_timesteps: int = 4, batch: int = 8,
                 state: dict[str, torch.Tensor] | None = None,
                 pre: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None, skip_blocks: bool = False) -> None:
        import copy

        from ditq.models.loading import make_denoiser

        self.inputs = pick_probes(ctx, n_timesteps, batch)
        transformer = copy.deepcopy(ctx.transformer)
        if state is not None:
            transformer.load_state_dict(state)
        self.model = make_denoiser(transformer)
        self.modules = dict(transformer.named_modules())
        if pre:
            from ditq.core.qlinear import QLinear

            for site in ctx.sites:
                if site.name in pre:
                    for lin in site.linears:
                        parent, _, attr = lin.rpartition(".")
                        setattr(self.modules[parent], attr, QLinear(self.modules[lin], pre=pre[site.name]))
        self.blocks = list(getattr(transformer, "transformer_blocks", None) or [])
        with torch.no_grad():
            self.reference, self.block_inputs = self._reference_pass(skip_blocks)

    def _reference_pass(self, keep: bool) -> tuple[list[torch.Tensor], list[list[torch.Tensor]] | None]:
        """The FP outputs on the probes and, per probe, the hidden states entering each transformer block (``None``
        when they would take more than ``BLOCK_CACHE_BYTES``, or a block was not called once per probe with them
        as its first argument)."""
        seen: list[torch.Tensor | None] = []

        def record(_m: nn.Module, args: tuple[Any, ...]) -> None:
            seen.append(args[0] if args and isinstance(args[0], torch.Tensor) else None)

        hooks = [b.register_forward_pre_hook(record) for b in self.blocks] if keep else []
        reference: list[torch.Tensor] = []
        cache: list[list[torch.Tensor]] | None = [] if keep and self.blocks else None
        size = 0
        try:
            for inp in self.inputs:
                seen.clear()
                reference.append(self.model.predict(*inp))
                if cache is None:
                    continue
                size += sum(h.numel() * h.element_size() for h in seen if h is not None)
                if len(seen) != len(self.blocks) or any(h is None for h in seen) or size > BLOCK_CACHE_BYTES:
                    cache = None
                    continue
                cache.append(list(seen))  # type: ignore[arg-type]
        finally:
            for h in hooks:
                h.remove()
        return reference, cache

    def first_block(self, names: typing.Iterable[str]) -> int:
        """The first transformer block that a swap of the Linears ``names`` changes (0 where one lies outside the
        blocks, or the block inputs are not cached): the blocks before it can be skipped."""
        if self.block_inputs is None:
            return 0
        first = len(self.blocks)
        for name in names:
            index = block_index(name)
            if index is None:
                return 0
            first = min(first, index)
        return first if first < len(self.blocks) else 0

    @contextlib.contextmanager
    def _skipping(self, start: int, probe: int) -> typing.Iterator[None]:
        """Blocks ``0 .. start - 1`` return probe ``probe``'s cached input of block ``start`` without computing:
        the same hidden states the reference pass computed, so the result is unchanged (bit for bit)."""
        if start == 0:
            yield
            return
        cached = self.block_inputs[probe][start]  # type: ignore[index]
        for j in range(start):
            last = j == start - 1
            self.blocks[j].forward = (lambda *a, **k: cached) if last else (lambda h, *a, **k: h)
        try:
            yield
        finally:
            for j in range(start):
                del self.blocks[j].forward

    @property
    def timesteps(self) -> list[float]:
        return [float(t[0]) for _, t, _ in self.inputs]

    @torch.no_grad()
    def noise_ratios(self, replacements: Mapping[str, nn.Module],
                     on_probe: Callable[[int], None] | None = None) -> list[float]:
        """Per probe: ||out - ref||^2 / ||ref||^2 with ``replacements`` (linear name -> module) swapped in.

        ``on_probe(i)`` runs before probe ``i`` (e.g. to point grouped replacements at that probe's group).
        """
        start = self.first_block(replacements)
        with swapped_modules(self.modules, replacements):
            ratios = []
            for i, (inp, ref) in enumerate(zip(self.inputs, self.reference)):
                if on_probe is not None:
                    on_probe(i)
                with self._skipping(start, i):
                    out = self.model.predict(*inp)
                ratios.append(noise_ratio(out, ref))
            return ratios

    def sqnr_db(self, replacements: Mapping[str, nn.Module]) -> float:
        """Mean over probes of the output SQNR in dB."""
        return float(sum(ratio_db(max(r, 1e-30)) for r in self.noise_ratios(replacements)) / len(self.inputs))
