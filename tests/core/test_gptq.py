"""GPTQ rounding (core.quantizers.gptq_codes): lower output error than round to nearest on correlated inputs."""

import pytest
import torch

from ditq.core.quantizers import dequantize_weight, gptq_codes, qrange, quantize_weight, weight_scales


def _correlated(m: int = 1024, k: int = 128, seed: int = 0) -> torch.Tensor:
    """Rows of one fixed correlated distribution (``seed`` draws other rows of the same one)."""
    mix = torch.randn(k, k, generator=torch.Generator().manual_seed(0)) / k ** 0.5 + 0.3 * torch.eye(k)
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(100 + seed)) @ mix
    x[:, :4] *= 6  # a few outlier channels, as DiT activations have
    return x


@pytest.mark.parametrize("bits,block,act_order", [(8, 0, False), (4, 0, False), (4, 32, False), (4, 32, True)])
def test_gptq_lowers_the_output_error_of_rounding(bits, block, act_order):
    x = _correlated()
    w = torch.randn(48, x.shape[1], generator=torch.Generator().manual_seed(1))
    h = x.T @ x / x.shape[0]
    scale = weight_scales(w, bits, block=block, input_power=h)
    codes = gptq_codes(w, scale, h, bits, act_order=act_order)
    nearest = quantize_weight(w, scale, bits)
    lo, hi = qrange(bits)
    assert torch.equal(codes, codes.round()) and codes.min() >= lo and codes.max() <= hi

    def out_err(c: torch.Tensor) -> float:
        return float(((w - dequantize_weight(c, scale)) @ x.T).square().sum())

    assert not torch.equal(codes, nearest)
    assert out_err(codes) < 0.6 * out_err(nearest)
    # and on inputs it was not solved on (same distribution, other draw): the gain is not overfitting
    x2 = _correlated(seed=2)
    held = [float(((w - dequantize_weight(c, scale)) @ x2.T).square().sum()) for c in (codes, nearest)]
    assert held[0] < held[1]


def test_gptq_with_uncorrelated_inputs_is_round_to_nearest():
    """A diagonal H has nothing to compensate with: the codes are the nearest ones (also on the FP8 grid)."""
    w = torch.randn(16, 64, generator=torch.Generator().manual_seed(3))
    h = torch.diag(torch.rand(64) + 0.5)
    for bits, fmt in ((4, "int"), (8, "int"), (8, "fp8_e4m3")):
        scale = weight_scales(w, bits, search=False, fmt=fmt)
        assert torch.equal(gptq_codes(w, scale, h, bits, fmt=fmt), quantize_weight(w, scale, bits, fmt))


def test_gptq_survives_dead_inputs_and_a_rank_deficient_h():
    x = _correlated(m=16, k=64)  # fewer rows than channels: H is singular
    x[:, 5] = 0  # and one input never fires
    w = torch.randn(8, 64)
    h = x.T @ x
    scale = weight_scales(w, 4, search=False)
    codes = gptq_codes(w, scale, h, 4)
    assert torch.isfinite(codes).all()
    nearest = quantize_weight(w, scale, 4)
    err = [float(((w - dequantize_weight(c, scale)) @ x.T).square().sum()) for c in (codes, nearest)]
    assert err[0] < err[1]
