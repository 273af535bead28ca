"""The FP8 E4M3 fake-quant grid: exact E4M3 values, round half to even, saturation at +-448, scale = amax / 448."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
import torch

from ditq.core.quantizers import (
    CLIP_GRID,
    FP8_E4M3_MAX,
    fake_quant,
    fake_quant_weight,
    round_fp8_e4m3,
    scale_from_amax,
    search_act_scale,
    weight_scales,
)


def _all_e4m3() -> torch.Tensor:
    values = np.arange(256, dtype=np.uint8).view(ml_dtypes.float8_e4m3fn).astype(np.float32)
    return torch.from_numpy(values[np.isfinite(values)])


def _ml_dtypes_saturating(x: torch.Tensor) -> torch.Tensor:
    clipped = np.clip(x.numpy(), -FP8_E4M3_MAX, FP8_E4M3_MAX)
    return torch.from_numpy(clipped.astype(ml_dtypes.float8_e4m3fn).astype(np.float32))


def test_every_e4m3_value_round_trips_exactly():
    values = _all_e4m3()
    assert values.numel() == 254 and values.abs().max() == FP8_E4M3_MAX  # 256 codes less the two NaNs
    assert torch.equal(round_fp8_e4m3(values), values)
    assert torch.equal(fake_quant(values * 0.5, 0.5, fmt="fp8_e4m3"), values * 0.5)


def test_rounding_matches_the_e4m3fn_cast_half_to_even_subnormals_included():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(50_000, generator=gen) * torch.exp2(torch.randint(-14, 10, (50_000,), generator=gen).float())
    assert torch.equal(round_fp8_e4m3(x), _ml_dtypes_saturating(x))
    # ties go to the even mantissa: 1 + 1/16 lies halfway between 1 and 1.125
    assert round_fp8_e4m3(torch.tensor([1.0625, 1.1875, 2.0**-10, 3 * 2.0**-10])).tolist() == \
        [1.0, 1.25, 0.0, 2.0**-8]


def test_saturates_at_448_instead_of_overflowing():
    x = torch.tensor([449.0, 463.0, 465.0, 1e6, float("inf"), -1e6, -500.0])
    assert round_fp8_e4m3(x).tolist() == [448.0, 448.0, 448.0, 448.0, 448.0, -448.0, -448.0]


def test_fp8_scale_maps_amax_to_448_and_the_int_grid_is_unchanged():
    assert float(scale_from_amax(896.0, fmt="fp8_e4m3")) == 2.0
    assert float(scale_from_amax(254.0)) == 2.0
    x = torch.linspace(-3, 3, 101)
    assert torch.equal(fake_quant(x, 0.05), torch.clamp(torch.round(x / 0.05), -128, 127) * 0.05)


def test_fp8_weight_scales_are_searched_on_the_fp8_grid():
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(16, 32, generator=gen)
    plain = weight_scales(w, search=False, fmt="fp8_e4m3")
    assert torch.allclose(plain, w.abs().amax(1) / FP8_E4M3_MAX)
    searched = weight_scales(w, fmt="fp8_e4m3")
    q = fake_quant_weight(w, searched, fmt="fp8_e4m3")
    codes = q / searched[:, None]
    assert torch.allclose(round_fp8_e4m3(codes), codes, rtol=1e-5)  # on the E4M3 grid, not the INT8 one
    ratios = searched / plain  # clip ratios of the FP8 scale, not of an INT8 one (127 / 448 apart)
    assert all(min(abs(r - c) for c in CLIP_GRID) < 1e-5 for r in ratios.tolist())
    err = (q - w).square().sum(1)
    assert (err <= (fake_quant_weight(w, plain, fmt="fp8_e4m3") - w).square().sum(1) + 1e-12).all()


@pytest.mark.parametrize("fmt", ["int", "fp8_e4m3"])
def test_activation_scale_search_uses_its_format(fmt):
    gen = torch.Generator().manual_seed(2)
    x, w = torch.randn(64, 32, generator=gen), torch.randn(8, 32, generator=gen)
    amax = float(x.abs().max())
    scale, err = search_act_scale(x, [w], amax, a_bits=8, w_bits=8, grid=(1.0,), fmt=fmt)
    assert scale == pytest.approx(amax / (FP8_E4M3_MAX if fmt == "fp8_e4m3" else 127), rel=1e-6)
    assert 0 < err < 1e-2


def test_absolute_activation_error_is_the_relative_one_times_the_output_power():
    gen = torch.Generator().manual_seed(3)
    x, w = torch.randn(64, 32, generator=gen) + 2, torch.randn(8, 32, generator=gen)
    amax = float(x.abs().max())
    s1, rel = search_act_scale(x, [w], amax, a_bits=8, w_bits=8, fmt="fp8_e4m3")
    s2, ab = search_act_scale(x, [w], amax, a_bits=8, w_bits=8, fmt="fp8_e4m3", absolute=True)
    assert s1 == s2 and ab == pytest.approx(rel * float((x @ w.T).square().sum()), rel=1e-5)
