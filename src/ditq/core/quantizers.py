"""Symmetric quantizers (zero point 0, as TensorRT requires) and the error measures the scale searches use.

Rounding and saturation follow ONNX QuantizeLinear: ``clamp(round_half_even(x / scale), qmin, qmax)``.

Formats (``fmt``): ``"int"`` (the integer grid of ``bits``) or ``"fp8_e4m3"`` (FP8 E4M3FN, what Hopper/Ada run:
``x / scale`` rounded half-to-even onto the E4M3 grid, saturated at +-448, as ONNX ``QuantizeLinear`` with a
``float8e4m3fn`` zero point and ``saturate=1`` does; ``scale = amax / 448``). FP8 is 8-bit only.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import torch

CLIP_GRID = (1.0, 0.95, 0.9, 0.85, 0.8, 0.7, 0.6, 0.5)


FORMATS = ("int", "fp8_e4m3")
FP8_E4M3_MAX = 448.0  # the largest finite E4M3FN value
_FP8_MIN_EXP = -6  # E4M3 normals are 2^-6 .. 448; below, subnormals on the fixed step 2^-9


def qrange(bits: int) -> tuple[int, int]:
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def qmax_of(bits: int = 8, fmt: str = "int") -> float:
    """The largest code magnitude: ``2^(bits-1) - 1`` for integers, 448 for FP8 E4M3."""
    return FP8_E4M3_MAX if fmt == "fp8_e4m3" else float(qrange(bits)[1])


def round_fp8_e4m3(v: torch.Tensor) -> torch.Tensor:
    """``v`` rounded half-to-even onto the E4M3FN grid (3 mantissa bits, subnormals), saturated at +-448.

    Exact in float32: ``frexp`` gives the binade, the step is ``2^(e - 3)`` (``2^-9`` for subnormals).
    """
    a = v.abs().clamp(max=FP8_E4M3_MAX)
    _, exp = torch.frexp(a)  # a = m * 2^exp, m in [0.5, 1): binade 2^(exp - 1)
    step = torch.exp2((exp - 1).clamp(min=_FP8_MIN_EXP).to(a.dtype) - 3)
    return torch.copysign(torch.round(a / step) * step, v)


def to_grid(v: torch.Tensor, bits: int = 8, fmt: str = "int") -> torch.Tensor:
    """The quantization codes of ``v`` (already divided by the scale): integers clamped to ``qrange(bits)``, or
    E4M3 values."""
    if fmt == "fp8_e4m3":
        return round_fp8_e4m3(v)
    qmin, qmax = qrange(bits)
    return torch.clamp(torch.round(v), qmin, qmax)


def fake_quant(x: torch.Tensor, scale: torch.Tensor | float, bits: int = 8, fmt: str = "int") -> torch.Tensor:
    return to_grid(x / scale, bits, fmt) * scale


def rounding_variance(x: torch.Tensor, scale: torch.Tensor | float, fmt: str = "int") -> torch.Tensor:
    """The expected squared rounding error of each element of ``x`` on the grid of ``scale`` (broadcast against
    ``x``), with the error uniform over one step: ``step^2 / 12``, the step being ``scale`` (integers) or E4M3's
    step at the element's binade times ``scale``. Clipping is not modelled (scales from the amax clip nothing)."""
    scale_t = torch.as_tensor(scale, dtype=torch.float32)
    if fmt == "fp8_e4m3":
        _, exp = torch.frexp((x / scale_t).abs().clamp(max=FP8_E4M3_MAX))
        step = torch.exp2((exp - 1).clamp(min=_FP8_MIN_EXP).to(torch.float32) - 3) * scale_t
    else:
        step = scale_t.expand_as(x)
    return step.square() / 12


def quantize(x: torch.Tensor, scale: torch.Tensor, bits: int = 8, fmt: str = "int") -> torch.Tensor:
    return to_grid(x / scale, bits, fmt)


def scale_from_amax(amax: torch.Tensor | float, bits: int = 8, fmt: str = "int") -> torch.Tensor:
    amax_t = torch.as_tensor(amax, dtype=torch.float32)
    return torch.clamp(amax_t, min=1e-8) / qmax_of(bits, fmt)


def weight_scales(weight: torch.Tensor, bits: int = 8, *, search: bool = True, block: int = 0,
                  input_power: torch.Tensor | None = None, input_factor: torch.Tensor | None = None,
                  fmt: str = "int") -> torch.Tensor:
    """Per-output-channel scales of ``weight`` [N, K]: max, or the clip ratio from CLIP_GRID with least error.

    ``block`` > 0: one scale per output channel and block of ``block`` input channels, shape [N, K / block].
    The error is the weight MSE, or with ``input_power`` the output error it causes: ``e H e^T`` per output row
    with ``H = E[x^T x]`` [K, K] (the Linear input's second moments; blocks use their diagonal sub-blocks), or the
    diagonal approximation when ``input_power`` is [K]. Plain weight MSE clips too eagerly at 4 bits.
    ``input_factor`` F [m, K] with ``H = F^T F`` gives the same error as ``||e F^T||^2`` in O(N K m) instead of
    O(N K^2): what large models calibrated on few tokens (m < K) need. ``fmt`` = ``"fp8_e4m3"`` searches the
    clip on the E4M3 grid (``amax / 448``).
    """
    if input_factor is not None:
        if block:
            k = weight.shape[1]
            return torch.stack([weight_scales(weight[:, j:j + block], bits, search=search,
                                              input_factor=input_factor[:, j:j + block], fmt=fmt)
                                for j in range(0, k, block)], dim=1)
        if search:
            return _search_clip(weight, bits, lambda e: (e @ input_factor.T).square().sum(1), fmt)
    if block:
        n, k = weight.shape
        if k % block:
            raise ValueError(f"weight block {block} does not divide the input size {k}")
        nb = k // block
        out = torch.empty(n, nb)
        for j in range(nb):  # blocks are independent under the block-diagonal part of H
            cols = slice(j * block, (j + 1) * block)
            h = None if input_power is None else (input_power[cols, cols] if input_power.dim() == 2
                                                  else input_power[cols])
            out[:, j] = weight_scales(weight[:, cols], bits, search=search, input_power=h, fmt=fmt)
        return out
    if not search:
        return scale_from_amax(weight.abs().amax(1).clamp_min(1e-8), bits, fmt)
    if input_power is None:
        return _search_clip(weight, bits, lambda e: e.square().sum(1), fmt)
    if input_power.dim() == 1:
        return _search_clip(weight, bits, lambda e: (e.square() * input_power).sum(1), fmt)
    return _search_clip(weight, bits, lambda e: ((e @ input_power) * e).sum(1), fmt)


def _search_clip(weight: torch.Tensor, bits: int, error: Callable[[torch.Tensor], torch.Tensor],
                 fmt: str = "int") -> torch.Tensor:
    """Per output row, the scale from CLIP_GRID whose rounding error ``error(e)`` [N] is least."""
    amax = weight.abs().amax(1).clamp_min(1e-8)
    best_err, best = None, None
    for ratio in CLIP_GRID:
        scale = scale_from_amax(amax * ratio, bits, fmt)
        err = error(fake_quant(weight, scale[:, None], bits, fmt) - weight)
        if best_err is None:
            best_err, best = err, scale
        else:
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best = torch.where(better, scale, best)
    assert best is not None
    return best


def search_act_scale(
    x: torch.Tensor, weights: Sequence[torch.Tensor], amax: float, *, a_bits: int, w_bits: int,
    grid: Sequence[float] = CLIP_GRID, w_block: int = 0, fmt: str = "int", absolute: bool = False,
) -> tuple[float, float]:
    """The clip of ``amax`` (from ``grid``) whose ``Q(x) Q(W)^T`` has least relative error against ``x W^T``.

    The error is summed over the Linears sharing ``x``; returns (scale, error). ``fmt`` is the grid of both.
    ``absolute``: the error is not divided by ``||x W^T||^2`` (to compare inputs that differ by a shift).
    """
    wq = torch.cat([fake_quant_weight(w, weight_scales(w, w_bits, search=False, block=block_for(w_block, w.shape[1]),
                                                       fmt=fmt), w_bits, fmt) for w in weights])
    ref = x @ torch.cat(list(weights)).T
    den = 1.0 if absolute else float(ref.square().sum()) or 1e-30
    best = (float("inf"), 0.0)
    for ratio in grid:
        scale = float(scale_from_amax(amax * ratio, a_bits, fmt))
        err = float((fake_quant(x, scale, a_bits, fmt) @ wq.T - ref).square().sum()) / den
        if err < best[0]:
            best = (err, scale)
    return best[1], best[0]


# -- weight blocks, dynamic activations, Hadamard rotations (W4A8, Q-DiT, ViDiT-Q) ----------------------------------

DYNAMIC_EPS = 2.0**-24  # floor of a dynamic scale (all-zero token); the smallest FP16 subnormal, so FP16 graphs agree


def block_for(block: int, k: int) -> int:
    """The weight block to use on an input of size ``k``: 0 (per output channel) when ``block`` >= ``k`` or 0."""
    if block <= 0 or block >= k:
        return 0
    if k % block:
        raise ValueError(f"weight block {block} does not divide the input size {k}")
    return block


def _per_scale(fn: Callable[[torch.Tensor, torch.Tensor, int, str], torch.Tensor], weight: torch.Tensor,
               scale: torch.Tensor, bits: int, fmt: str = "int") -> torch.Tensor:
    """``fn(w, s, bits, fmt)`` with per-channel scales [N] or block scales [N, K / block] broadcast over ``weight``."""
    if scale.dim() == 1:
        return fn(weight, scale[:, None], bits, fmt)
    n, k = weight.shape
    blocks = scale.shape[1]
    return fn(weight.reshape(n, blocks, k // blocks), scale[:, :, None], bits, fmt).reshape(n, k)


def fake_quant_weight(weight: torch.Tensor, scale: torch.Tensor, bits: int = 8, fmt: str = "int") -> torch.Tensor:
    """Fake-quantize ``weight`` [N, K] with per-channel scales [N] or block scales [N, K / block]."""
    return _per_scale(fake_quant, weight, scale, bits, fmt)


def quantize_weight(weight: torch.Tensor, scale: torch.Tensor, bits: int = 8, fmt: str = "int") -> torch.Tensor:
    """Codes of ``weight`` [N, K] (a float tensor of integers, or of E4M3 values) for per-channel or block scales."""
    return _per_scale(quantize, weight, scale, bits, fmt)


def dequantize_weight(codes: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``codes * scale`` for per-channel scales [N] or block scales [N, K / block]: the weight a Linear uses."""
    return _per_scale(lambda c, s, _b, _f: c * s, codes, scale, 8)


WEIGHT_ROUNDINGS = ("nearest", "gptq")


def gptq_codes(weight: torch.Tensor, scale: torch.Tensor, h: torch.Tensor, bits: int = 8, *, fmt: str = "int",
               damp: float = 0.01, act_order: bool = False, batch: int = 128) -> torch.Tensor:
    """The codes of ``weight`` [N, K] with GPTQ's error feedback (Frantar et al. 2023) instead of round to nearest.

    Columns are rounded one at a time (in input order, or by decreasing ``H`` diagonal with ``act_order``) onto the
    fixed grid of ``scale`` (per channel [N] or per block [N, K / block], as ``quantize_weight``), and each column's
    rounding error is spread over the columns not yet rounded through the upper Cholesky factor of ``H^-1``: this
    minimises ``e H e^T`` per output row, the output error ``||(W - Wq) X^T||^2`` for ``H = X^T X``. ``H`` [K, K]
    gets ``damp`` x its mean diagonal added (and 1 on dead inputs) so the factorisation exists. Returns a float
    tensor of the codes (integers in ``qrange(bits)``, or E4M3 values for ``fmt="fp8_e4m3"``).
    """
    n, k = weight.shape
    w = weight.double().clone()
    s = scale.double()[:, None].expand(n, k) if scale.dim() == 1 else \
        scale.double().repeat_interleave(k // scale.shape[1], dim=1)
    hd = h.double().clone()
    dead = hd.diagonal() <= 0
    hd[dead, dead] = 1.0
    hd.diagonal().add_(damp * float(hd.diagonal().mean()))
    perm = torch.argsort(hd.diagonal(), descending=True) if act_order else torch.arange(k)
    w, s, hd = w[:, perm], s[:, perm], hd[perm][:, perm]
    u = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(hd)), upper=True)
    codes = torch.empty_like(w)
    for j0 in range(0, k, batch):  # GPTQ's lazy batch updates: the rest of W is updated once per batch
        j1 = min(j0 + batch, k)
        err = torch.empty(n, j1 - j0, dtype=w.dtype)
        for j in range(j0, j1):
            q = to_grid(w[:, j] / s[:, j], bits, fmt)
            codes[:, j] = q
            e = (w[:, j] - q * s[:, j]) / u[j, j]
            w[:, j + 1:j1] -= e[:, None] * u[j, j + 1:j1][None, :]
            err[:, j - j0] = e
        w[:, j1:] -= err @ u[j0:j1, j1:]
    return codes[:, torch.argsort(perm)].float()


def dynamic_fake_quant(x: torch.Tensor, bits: int = 8, group: int = 0) -> torch.Tensor:
    """Symmetric fake quantization with a scale per token (``group`` = 0) or per token and channel group.

    ``scale = max(amax / qmax, DYNAMIC_EPS)`` computed at run time; the ONNX export spells the same float ops.
    """
    qmin, qmax = qrange(bits)
    shape = x.shape
    if group:
        x = x.reshape(*shape[:-1], shape[-1] // group, group)
    scale = torch.clamp(x.abs().amax(-1, keepdim=True) / qmax, min=DYNAMIC_EPS)
    return (torch.clamp(torch.round(x / scale), qmin, qmax) * scale).reshape(shape)


def largest_pow2_divisor(k: int) -> int:
    return k & -k


def hadamard(n: int) -> torch.Tensor:
    """The normalised Sylvester Hadamard matrix of order ``n`` (a power of two): orthogonal and symmetric."""
    if n < 1 or n & (n - 1):
        raise ValueError(f"a Sylvester Hadamard matrix needs a power-of-two order, got {n}")
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h / h.shape[0] ** 0.5


@functools.lru_cache(maxsize=8)
def _hadamard_cached(n: int) -> torch.Tensor:
    """``hadamard(n)``, built once: ``rotate`` runs in every forward of the rotated fake-quant and int8 Linears
    (read only: callers get ``.to`` copies or multiply by it)."""
    return hadamard(n)


def rotation_matrix(k: int, block: int) -> torch.Tensor:
    """Block-diagonal Hadamard [k, k] (float64) with blocks of ``block`` (a power of two dividing ``k``).

    ``x @ R`` rotates activations online; ``W @ R`` folds into the weight, since ``(x R)(W R)^T = x W^T``.
    """
    if block < 1 or block & (block - 1) or k % block:
        raise ValueError(f"rotation block {block} must be a power of two dividing the input size {k}")
    return torch.block_diag(*[hadamard(block)] * (k // block))


def rotation_signs(k: int, seed: int = 0) -> torch.Tensor:
    """``k`` pseudo-random signs (+-1, float32) from ``seed``: ``(x * d) @ H`` is a randomized Hadamard (QuaRot's
    form). A plain Sylvester block's first column is all ones, so a common offset of the block's channels
    (e.g. a shifted post-GELU input) piles up in its coordinate 0; random signs spread it like any other direction.
    HTG folds ``d`` into its smoothing vector, so the online rotation itself stays the plain block-Hadamard."""
    return (torch.randint(0, 2, (k,), generator=torch.Generator().manual_seed(seed)) * 2 - 1).float()


def rotate(x: torch.Tensor, block: int) -> torch.Tensor:
    """``x @ R`` over the last dimension for ``R = rotation_matrix(k, block)`` (``x`` itself for block 0), without
    forming R: each ``block``-wide slice times the Hadamard of that order, k x block work per row instead of k x k
    (fc2 of DiT-XL: 4608 channels, 72x less)."""
    if not block:
        return x
    k = x.shape[-1]
    if block < 1 or block & (block - 1) or k % block:
        raise ValueError(f"rotation block {block} must be a power of two dividing the input size {k}")
    h = _hadamard_cached(block).to(dtype=x.dtype, device=x.device)
    return (x.reshape(*x.shape[:-1], k // block, block) @ h).reshape(x.shape)


def rotate_weight(weight: torch.Tensor, rotation: int) -> torch.Tensor:
    """The float weight [N, K] a Linear quantizes: ``W @ R`` for an online rotation of block ``rotation``, else W."""
    if not rotation:
        return weight.float()
    return rotate(weight.double(), rotation).float()
