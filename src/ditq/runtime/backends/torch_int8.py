"""``torch-int8``: real INT8 GEMMs in PyTorch (``torch._int_mm``), one precomputed module set per timestep group.

Built from the model and recipe the way ``fake_quant.group_denoiser`` builds the fake-quant reference (same
``fold_state``, same recipe scales), with the same numerics: for each quantized Linear,

    q = clamp(round(x / a), qmin, qmax)  as int8             (a: the group's static scale, or per token at run time)
    y = int32(q @ Wq^T) * (a * w_scale) + b                  (one fused epilogue: ``addcmul``)

where ``Wq`` is the recipe's per-output-channel INT8 weight. Everything else (attention BMMs, adaLN, embedders,
LayerNorm, GELU) runs in the float dtype, as in the reference.

Weights: folding changes weights identically for every group (smoothing is per site) and only biases per group, so
every tensor that is equal across groups is stored once and shared by all group modules; a group switch only picks
another precomputed module (no copy, no re-quantization).

Kernels: ``torch._int_mm`` (int8 x int8 -> int32). On CUDA it needs M > 16 and K, N multiples of 8 (rows are padded
to 32 when M <= 16); on CPU (torch 2.13) it runs for any shape but is a reference loop, tens of times slower than an
FP32 GEMM: the CPU path is for numerics, the GPU path for speed (measured in ``ditq bench speed``). Optional on
CUDA: ``compile=True`` lets torch.compile (Inductor, Triton) fuse quantize/epilogue with the GEMM, and
``cuda_graphs=True`` captures one CUDA graph per group and input shape.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ditq.artifacts.recipe import Recipe
from ditq.core.cond import Cond
from ditq.core.quantizers import DYNAMIC_EPS, qrange, quantize_weight, rotate, rotate_weight
from ditq.core.sites import Denoiser
from ditq.errors import DitqError
from ditq.models.loading import LoadedModel, check_recipe_model, make_denoiser
from ditq.models.schedule import SchedulerSpec
from ditq.runtime.backends.base import Fn, GroupedBackend
from ditq.runtime.backends.fake_quant import folded_transformer, open_recipe

log = logging.getLogger(__name__)

NAME = "torch-int8"

CUDA_MIN_ROWS = 17  # torch._int_mm on CUDA: M > 16


def int_mm(q: torch.Tensor, w_t: torch.Tensor) -> torch.Tensor:
    """``q [M, K] int8 @ w_t [K, N] int8 -> int32``, padding rows on CUDA where ``_int_mm`` needs M > 16."""
    m = q.shape[0]
    if q.is_cuda and m < CUDA_MIN_ROWS:
        q = F.pad(q, (0, 0, 0, 32 - m))
        return torch._int_mm(q, w_t)[:m]
    return torch._int_mm(q, w_t)


class Int8Linear(nn.Module):
    """A Linear whose input and weight are INT8 and whose GEMM accumulates in int32.

    ``act_scale`` given: static per-tensor input scale; ``None``: dynamic, one scale per token (``amax / qmax``,
    floored at ``DYNAMIC_EPS`` as the fake-quant reference does). ``pre`` is an explicit ``(x - shift) * inv``
    before quantization (sites without a linear producer); ``rotation`` an online block-Hadamard ``x @ R``.
    Buffers: ``weight_int8`` [N, K] (``weight_t`` is its [K, N] column-major view), ``w_scale`` [N], ``bias`` [N],
    ``out_scale`` = act_scale * w_scale [N] (static only).
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, w_scale: torch.Tensor, *,
                 act_scale: float | None, a_bits: int = 8, pre: tuple[torch.Tensor, torch.Tensor] | None = None,
                 rotation: int = 0, dtype: torch.dtype = torch.float32, codes: torch.Tensor | None = None) -> None:
        super().__init__()
        n, k = weight.shape
        if w_scale.shape != (n,):
            raise DitqError(f"torch-int8 needs per-output-channel weight scales [{n}], got {tuple(w_scale.shape)}")
        self.in_features, self.out_features, self.a_bits = k, n, a_bits
        self.qmin, self.qmax = qrange(a_bits)
        if codes is None:  # rounded to nearest here; a recipe's codes come from Recipe.weight_codes
            codes = quantize_weight(rotate_weight(weight, rotation), w_scale.float(), 8)
        self.register_buffer("weight_int8", codes.to(torch.int8))
        self.register_buffer("w_scale", w_scale.to(dtype))
        self.register_buffer("bias", torch.zeros(n, dtype=dtype) if bias is None else bias.detach().to(dtype))
        self.act_scale = None if act_scale is None else float(act_scale)
        self.register_buffer("out_scale", None if act_scale is None else (w_scale.double() * act_scale).to(dtype))
        self.register_buffer("pre_shift", None if pre is None else pre[0].to(dtype))
        self.register_buffer("pre_scale", None if pre is None else pre[1].to(dtype))
        self.rotation = rotation  # block of the online block-Hadamard (0: none)

    @property
    def weight_t(self) -> torch.Tensor:
        return self.weight_int8.t()

    def quantize_input(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """INT8 codes of ``x`` [M, K] and, when dynamic, the per-token scales [M, 1]."""
        if self.pre_shift is not None:
            x = (x - self.pre_shift) * self.pre_scale
        x = rotate(x, self.rotation)
        if self.act_scale is not None:
            return torch.clamp(torch.round(x / self.act_scale), self.qmin, self.qmax).to(torch.int8), None
        scale = torch.clamp(x.abs().amax(-1, keepdim=True) / self.qmax, min=DYNAMIC_EPS)
        return torch.clamp(torch.round(x / scale), self.qmin, self.qmax).to(torch.int8), scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        q, tok_scale = self.quantize_input(x.reshape(-1, self.in_features))
        acc = int_mm(q, self.weight_t).to(self.bias.dtype)
        if tok_scale is None:
            y = torch.addcmul(self.bias, acc, self.out_scale)  # dequant + bias: one epilogue
        else:
            y = torch.addcmul(self.bias, acc * tok_scale.to(acc.dtype), self.w_scale)
        return y.reshape(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        mode = "dynamic per token" if self.act_scale is None else f"static a={self.act_scale:.4g}"
        return f"in={self.in_features}, out={self.out_features}, A{self.a_bits} {mode}"


def _check_spec(recipe: Recipe, linear: str, cuda: bool, k: int, n: int) -> None:
    spec = recipe.linear_spec(linear)
    if spec.fmt != "int":
        raise DitqError(f"torch-int8 runs integer GEMMs; {linear} is {spec.fmt}: use the fake-quant, onnxruntime "
                        "or tensorrt backend for this recipe")
    if spec.w_bits != 8 or spec.w_block:
        raise DitqError(f"torch-int8 runs 8-bit per-channel weights; {linear} has W{spec.w_bits} block "
                        f"{spec.w_block}: use the fake-quant or onnxruntime backend for this recipe")
    if spec.act == "dynamic_group":
        raise DitqError(f"torch-int8 quantizes activations per tensor or per token; {linear} uses per-group "
                        f"dynamic activations (a_group={spec.a_group}): use the fake-quant or onnxruntime backend")
    if cuda and (k % 8 or n % 8):
        raise DitqError(f"torch._int_mm on CUDA needs K and N multiples of 8; {linear} is {n}x{k}")


def int8_group_denoiser(model: LoadedModel, recipe: Recipe, group_id: int, *, dynamic: bool = False,
                        dtype: torch.dtype = torch.float32, cuda: bool = False) -> Denoiser:
    """The model with group ``group_id`` folded in and every quantized Linear replaced by an ``Int8Linear``.

    ``dynamic=True`` quantizes every input per token at run time instead of with the recipe's static scales.
    """
    check_recipe_model(model, recipe)
    # per-token run-time scales (dynamic=True) are not what the static bias corrections compensate
    transformer, pre, sites = folded_transformer(model, recipe, group_id, corrected=not dynamic)
    modules = dict(transformer.named_modules())
    for site in sites:
        for lin in site.linears:
            linear = modules[lin]
            assert isinstance(linear, nn.Linear)
            _check_spec(recipe, lin, cuda, linear.in_features, linear.out_features)
            spec = recipe.linear_spec(lin)
            static = not (dynamic or spec.dynamic)
            q = Int8Linear(linear.weight.detach(), linear.bias, recipe.w_scale(lin),
                           codes=recipe.weight_codes(lin, linear.weight.detach()),
                           act_scale=float(recipe.act_scale(site.name, group_id)) if static else None,
                           a_bits=spec.a_bits, pre=pre.get(site.name), rotation=spec.rotation, dtype=dtype)
            parent, _, attr = lin.rpartition(".")
            setattr(modules[parent], attr, q)
    return make_denoiser(transformer.to(dtype))


def share_identical(modules: Sequence[nn.Module]) -> int:
    """Make every parameter/buffer of ``modules[1:]`` that equals ``modules[0]``'s the very same tensor.

    The modules must have the same structure. Returns the number of bytes saved.
    """
    saved = 0
    first = dict(modules[0].named_modules())
    for other in modules[1:]:
        for name, mod in other.named_modules():
            ref = first[name]
            for store, ref_store in ((mod._parameters, ref._parameters), (mod._buffers, ref._buffers)):
                for key, t in store.items():
                    r = ref_store.get(key)
                    if (t is not None and r is not None and t is not r and t.shape == r.shape
                            and t.dtype == r.dtype and t.device == r.device and torch.equal(t, r)):
                        store[key] = r
                        saved += t.numel() * t.element_size()
    return saved


def to_device_shared(modules: Sequence[nn.Module], device: torch.device | str) -> None:
    """Move ``modules`` to ``device`` in place, keeping tensors that are shared between them shared."""
    memo: dict[int, torch.Tensor] = {}
    for module in modules:
        for mod in module.modules():
            for store in (mod._parameters, mod._buffers):
                for key, t in store.items():
                    if t is None:
                        continue
                    if id(t) not in memo:
                        moved = t.detach().to(device)
                        memo[id(t)] = nn.Parameter(moved, requires_grad=False) if isinstance(t, nn.Parameter) \
                            else moved
                    store[key] = memo[id(t)]


def unique_bytes(modules: Sequence[nn.Module]) -> int:
    """Bytes of distinct tensor storages held by ``modules`` (shared tensors counted once)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for module in modules:
        for t in (*module.parameters(), *module.buffers()):
            key = (t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
            if key not in seen:
                seen.add(key)
                total += key[1]
    return total


class CudaGraphRunner:
    """Replays one CUDA graph per input shape for a module (inputs copied into static buffers).

    The returned tensor is the graph's static output: the next replay overwrites it (copy it to keep it).
    """

    def __init__(self, module: nn.Module, pool: Any = None, warmup: int = 2) -> None:
        self.module, self.pool, self.warmup = module, pool, warmup
        self.graphs: dict[tuple[Any, ...], tuple[Any, tuple[torch.Tensor, ...], torch.Tensor]] = {}

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        key = tuple((t.shape, t.dtype) for t in inputs)
        if key not in self.graphs:
            static = tuple(t.clone() for t in inputs)
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(self.warmup):
                    self.module(*static)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self.pool):
                out = self.module(*static)
            self.graphs[key] = (graph, static, out)
        graph, static, out = self.graphs[key]
        for s, t in zip(static, inputs):
            s.copy_(t)
        graph.replay()
        return out


@dataclass
class TorchInt8Backend(GroupedBackend):
    """A ``GroupedBackend`` that also exposes the per-group modules and their device-resident callables."""

    modules: list[Denoiser] = field(default_factory=list)
    device_fns: list[Callable[..., torch.Tensor]] = field(default_factory=list)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    shared_bytes: int = 0  # bytes not stored twice thanks to sharing identical tensors across groups

    def device_fn(self, timestep: float) -> Callable[..., torch.Tensor]:
        """The precomputed callable of the group holding ``timestep`` (inputs already on ``device``)."""
        return self.device_fns[self.group_of(timestep)]

    def deactivate_impl(self) -> None:
        super().deactivate_impl()
        self.modules, self.device_fns = [], []


def torch_int8_backend(model: LoadedModel, recipe: Recipe, *, device: str | torch.device = "cpu",
                       dynamic: bool = False, dtype: torch.dtype = torch.float32, compile: bool = False,
                       cuda_graphs: bool = False) -> TorchInt8Backend:
    """Per-group INT8 denoisers built once (identical tensors shared), dispatched by timestep like the others.

    The backend takes and returns CPU or device tensors; inputs are moved to ``device`` and the output is
    returned as float32 on the input's device. ``device_fn(timestep)`` skips the transfers (for timing).
    """
    device = torch.device(device)
    cuda = device.type == "cuda"
    if (compile or cuda_graphs) and not cuda:
        raise DitqError("compile and cuda_graphs need a CUDA device for torch-int8; pass device='cuda'")

    def build() -> tuple[list[Denoiser], list[Callable[..., torch.Tensor]], int]:
        dens = [int8_group_denoiser(model, recipe, g.group_id, dynamic=dynamic, dtype=dtype, cuda=cuda)
                for g in recipe.groups]
        saved = share_identical(dens)
        log.info("torch-int8: %d groups share %.1f MB of identical tensors", len(dens), saved / 2**20)
        to_device_shared(dens, device)
        pool = torch.cuda.graph_pool_handle() if cuda_graphs else None
        calls: list[Callable[..., torch.Tensor]] = []
        for den in dens:
            fn: Callable[..., torch.Tensor] = den
            if compile:
                fn = torch.compile(den, dynamic=False)
            if cuda_graphs:
                fn = CudaGraphRunner(fn, pool)
            calls.append(fn)
        return dens, calls, saved

    def make(fn: Callable[..., torch.Tensor], names: tuple[str, ...]) -> Fn:
        @torch.no_grad()
        def run(x: torch.Tensor, t: torch.Tensor, cond: Cond) -> torch.Tensor:
            c = [cond[k].to(device, dtype if cond[k].is_floating_point() else cond[k].dtype) for k in names]
            out = fn(x.to(device, dtype), t.to(device), *c)
            return out.float().to(x.device)

        return run

    def fns(dens: list[Denoiser], calls: list[Callable[..., torch.Tensor]]) -> list[Fn]:
        return [make(fn, den.cond_names) for fn, den in zip(calls, dens)]

    dens, calls, saved = build()
    backend = TorchInt8Backend(f"{NAME}-{recipe.method}", [g.interval for g in recipe.groups], fns(dens, calls),
                               modules=dens, device_fns=calls, device=device, shared_bytes=saved)

    def reload() -> list[Fn]:  # activate() after deactivate(): build the groups again
        dens, calls, saved = build()
        backend.modules, backend.device_fns, backend.shared_bytes = dens, calls, saved
        return fns(dens, calls)

    backend.loader = reload
    return backend


def open_artifact(path: Path, *, fp: bool = False, threads: int | None = None, fuse: bool | None = None,
                  scheduler: SchedulerSpec | None = None) -> tuple[GroupedBackend, dict[str, Any]]:
    """``open_backend(path, "torch-int8")``: a recipe directory (or the recipe an ONNX directory was exported
    from), run on the CUDA GPU when torch sees one, else on the CPU (slow: for numerics). ``threads`` and
    ``fuse`` (ONNX Runtime settings) do not apply."""
    if fp:
        raise DitqError("--fp is not available with --backend torch-int8 (it runs the recipe's INT8 GEMMs); use "
                        "--backend fake-quant --fp")
    recipe, model, info = open_recipe(path, scheduler)
    return torch_int8_backend(model, recipe, device="cuda" if torch.cuda.is_available() else "cpu"), info
