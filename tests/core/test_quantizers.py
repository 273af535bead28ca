"""Quantizer primitives."""

import torch


def test_weight_clip_search_with_input_rows_equals_the_second_moment_form():
    """input_factor F (few rows, large K) picks the same clips as input_power H = F^T F, in O(N K m)."""
    from ditq.core.quantizers import weight_scales

    gen = torch.Generator().manual_seed(0)
    w = torch.randn(24, 64, generator=gen) * torch.linspace(0.2, 3, 64)
    f = torch.randn(16, 64, generator=gen) * torch.linspace(3, 0.1, 64) / 4
    for bits, block in ((4, 0), (8, 0), (4, 32)):
        a = weight_scales(w.double(), bits, block=block, input_power=(f.T @ f).double())
        b = weight_scales(w.double(), bits, block=block, input_factor=f.double())
        torch.testing.assert_close(a, b)
    assert not torch.equal(weight_scales(w, 4, input_factor=f), weight_scales(w, 4))  # the rows matter
