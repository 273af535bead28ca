import math

import torch
from method_checks import assert_fold_exact, assert_round_trip, export_and_compare, int4_weight_dqs

from ditq.calibration.methods.ptq4dit import calibrated_salience, spearman, spearman_weights


def test_spearman_weighting_matches_a_hand_computed_case():
    w_sal = torch.tensor([1.0, 2.0, 3.0, 4.0])
    act = torch.tensor([[1.0, 2.0, 3.0, 4.0],  # same ranking as the weights: rho = 1
                        [4.0, 3.0, 2.0, 1.0],  # reversed: rho = -1
                        [1.0, 3.0, 2.0, 4.0]])  # one swap: rho = 1 - 6 * 2 / (4 * 15) = 0.8
    eta, rho = spearman_weights(act, w_sal)
    assert torch.allclose(rho, torch.tensor([1.0, -1.0, 0.8], dtype=torch.float64))
    e = [math.exp(-1.0), math.exp(1.0), math.exp(-0.8)]
    expected_eta = torch.tensor([v / sum(e) for v in e], dtype=torch.float64)  # softmax(-rho)
    assert torch.allclose(eta, expected_eta)
    expected = [sum(expected_eta[t].item() * act[t, j].item() for t in range(3)) for j in range(4)]
    assert torch.allclose(calibrated_salience(act, w_sal), torch.tensor(expected), atol=1e-6)
    assert spearman([1, 1, 1], [1, 2, 3]) == 0.0  # constant salience: no correlation


def test_ptq4dit_balances_qkv_out_fc1_only(calibrated):
    recipe = calibrated("ptq4dit")
    assert recipe.num_groups == 1
    assert recipe.calibration["method"]["spearman_rho_mean"]
    for site in recipe.sites:
        assert not recipe.shift(site.name, 0).any()
        s = recipe.smooth(site.name)
        if site.name.endswith("ff.net.2"):
            assert torch.equal(s, torch.ones_like(s)) and site.alpha is None
        else:
            assert site.alpha == 0.5 and not torch.allclose(s, torch.ones_like(s))


def test_ptq4dit_scale_is_the_balanced_salience(tiny_model):
    """s = sqrt(s(X) / s(W)) with the Spearman-calibrated s(X): X / s = X s~/s(X), W s = W s~/s(W)."""
    from ditq.calibration.methods.base import Context
    from ditq.calibration.methods.ptq4dit import PTQ4DiTConfig
    from ditq.calibration.stats import SiteStats
    from ditq.models.loading import quant_sites

    sites = quant_sites(tiny_model.transformer)
    state = tiny_model.transformer.state_dict()
    weights = {s.name: [state[f"{lin}.weight"] for lin in s.linears] for s in sites}
    gen = torch.Generator().manual_seed(0)
    stats = {}
    for s in sites:
        c = weights[s.name][0].shape[1]
        hi = torch.rand(5, c, generator=gen) * 4 + 0.1
        stats[s.name] = SiteStats(hi, -hi / 2, torch.ones(5, dtype=torch.float64), torch.ones(5, dtype=torch.float64),
                                  torch.randn(5, 8, c, generator=gen))
    ctx = Context(sites, stats, [900, 700, 500, 300, 100], weights, 1000, 8, 8)
    sol = PTQ4DiTConfig().solve(ctx)
    site = sites[0]  # qkv
    w_sal = torch.cat(weights[site.name]).abs().amax(0)
    x_sal = calibrated_salience(stats[site.name].ch_max, w_sal)
    assert torch.allclose(sol.smooth[site.name], torch.sqrt(x_sal / w_sal), rtol=1e-5)
    balanced = torch.sqrt(x_sal * w_sal)
    assert torch.allclose(x_sal / sol.smooth[site.name], balanced, rtol=1e-5)
    assert torch.allclose(w_sal * sol.smooth[site.name], balanced, rtol=1e-5)


def test_ptq4dit_fold_round_trip_and_export(calibrated, tiny_model, tiny_reference, tmp_path):
    from ditq.calibration.methods.ptq4dit import PTQ4DiTConfig

    assert PTQ4DiTConfig.calibration_defaults == {"steps": 25, "samples": 32}
    w8 = calibrated("ptq4dit")
    assert_fold_exact(tiny_model, w8)
    assert_round_trip(w8, tmp_path / "rt")
    export_and_compare(tiny_model, w8, tiny_reference, tmp_path / "w8")
    w4 = calibrated("ptq4dit", w_bits=4)
    art = export_and_compare(tiny_model, w4, tiny_reference, tmp_path / "w4")
    assert len(int4_weight_dqs(art)) == sum(len(s.linears) for s in w4.sites)
