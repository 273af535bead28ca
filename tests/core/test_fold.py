import torch

from ditq.core.fold import fold_state
from ditq.models.loading import quant_sites
from ditq.runtime.backends import group_denoiser


@torch.no_grad()
def test_folded_fp_model_equals_original_for_every_group(tiny_model, tiny_recipe, feeds):
    den = tiny_model.denoiser()
    inputs = feeds([0, 120, 480, 999])
    for g in range(tiny_recipe.num_groups):
        folded = group_denoiser(tiny_model, tiny_recipe, g, quantize=False)
        for x, t, y in inputs:
            ref = den(x, t, y)
            rel = float((folded(x, t, y) - ref).norm() / ref.norm())
            assert rel <= 1e-4, (g, float(t[0]), rel)


def test_recipe_has_nontrivial_shifts_and_scales(tiny_recipe):
    site = tiny_recipe.sites[0].name
    assert tiny_recipe.shift(site, 0).abs().max() > 0
    assert not torch.allclose(tiny_recipe.smooth(site), torch.ones_like(tiny_recipe.smooth(site)))


@torch.no_grad()
def test_fold_is_exact_with_random_shift_and_scale(tiny_model, feeds):
    """A large random shift/scale on every site, including the explicit fc2 pre-affine, changes nothing."""
    sites = quant_sites(tiny_model.transformer)
    state = tiny_model.transformer.state_dict()
    gen = torch.Generator().manual_seed(3)
    dims = {s.name: state[f"{s.linears[0]}.weight"].shape[1] for s in sites}
    shifts = {n: torch.randn(c, generator=gen) for n, c in dims.items()}
    smooth = {n: torch.rand(c, generator=gen) * 4 + 0.25 for n, c in dims.items()}
    folded, pre = fold_state(state, sites, shifts, smooth)
    assert set(pre) == {s.name for s in sites if s.fold == "explicit"}
    model = type(tiny_model.transformer).from_config(tiny_model.transformer.config).eval()
    model.load_state_dict(folded)
    modules = dict(model.named_modules())
    for name, (z, inv) in pre.items():
        modules[name].register_forward_pre_hook(lambda _m, a, z=z, inv=inv: ((a[0] - z) * inv,))
    from ditq.models.loading import make_denoiser

    for x, t, y in feeds([5, 700]):
        ref = tiny_model.denoiser()(x, t, y)
        assert float((make_denoiser(model)(x, t, y) - ref).norm() / ref.norm()) <= 1e-4
