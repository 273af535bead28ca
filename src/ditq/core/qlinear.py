"""The fake-quantized Linear: the numerics the exported QDQ graphs and TensorRT compute, in torch."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ditq.core.quantizers import (
    dequantize_weight,
    dynamic_fake_quant,
    fake_quant,
    fake_quant_weight,
    rotate,
    rotate_weight,
)


class QLinear(nn.Module):
    """A Linear with an optional explicit pre-affine ``(x - shift) * scale`` and fake-quantized input/weight.

    ``rotation`` > 0: an online block-Hadamard ``x @ R`` with ``W @ R`` folded into the weight (exact in FP).
    ``w_scale`` of shape [N] is per output channel, [N, K / block] per block; ``w_codes`` [N, K] (in the rotated
    domain) are the weight's codes when they were chosen elsewhere (GPTQ), else ``W / w_scale`` rounds to nearest.
    The input is quantized statically
    with ``act_scale``, or at run time per token (``dynamic_group=0``) or per token and channel group
    (``dynamic_group`` > 0); ``None`` for both leaves it in float. ``fmt`` is the grid of weight and static
    input: ``"int"`` (``w_bits``/``a_bits``) or ``"fp8_e4m3"`` (E4M3, saturating at 448 as ONNX Q/DQ does).
    """

    def __init__(self, linear: nn.Linear, *, w_scale: torch.Tensor | None = None, act_scale: float | None = None,
                 pre: tuple[torch.Tensor, torch.Tensor] | None = None, w_bits: int = 8, a_bits: int = 8,
                 dynamic_group: int | None = None, rotation: int = 0, fmt: str = "int",
                 w_codes: torch.Tensor | None = None) -> None:
        super().__init__()
        weight = linear.weight.detach()
        if rotation:
            weight = rotate_weight(weight, rotation).to(linear.weight.dtype)
        if w_scale is not None and w_codes is not None:
            weight = dequantize_weight(w_codes.to(weight.dtype), w_scale.to(weight.dtype))
        elif w_scale is not None:
            weight = fake_quant_weight(weight, w_scale, w_bits, fmt)
        self.register_buffer("weight", weight)
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach())
        self.rotation = rotation  # block of the online block-Hadamard (0: none)
        self.act_scale, self.a_bits, self.fmt = act_scale, a_bits, fmt
        self.dynamic_group = dynamic_group
        self.pre = pre

    def quantizer_io(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x', Q(x'))``: the input quantizer's input (``x`` after the pre-affine and rotation) and its output
        (``x'`` itself when the input stays float)."""
        if self.pre is not None:
            x = (x - self.pre[0]) * self.pre[1]
        x = rotate(x, self.rotation)
        if self.act_scale is not None:
            return x, fake_quant(x, self.act_scale, self.a_bits, self.fmt)
        if self.dynamic_group is not None:
            return x, dynamic_fake_quant(x, self.a_bits, self.dynamic_group)
        return x, x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.quantizer_io(x)[1], self.weight, self.bias)
