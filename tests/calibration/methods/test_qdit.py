import numpy as np
from method_checks import assert_fold_exact, assert_round_trip, export_and_compare, int4_weight_dqs

from ditq.calibration.methods.qdit import evolve, feasible_groups, qdit_spec

SEARCH = {"population": 6, "epochs": 2, "max_evals": 10, "min_mean_group": 40}


def test_feasible_groups_are_divisors_of_k():
    assert feasible_groups(32) == (32,)
    assert feasible_groups(128) == (32, 64, 128)
    assert feasible_groups(576) == (32, 64, 192, 288)
    assert feasible_groups(24) == (24,)  # nothing divides: per channel / per token
    assert qdit_spec(128, 128, 4, 8).act == "dynamic_token" and qdit_spec(128, 128, 4, 8).w_block == 0
    assert qdit_spec(64, 128, 4, 8).a_group == 64 and qdit_spec(64, 128, 4, 8).w_block == 64


def test_evolution_respects_constraint_and_budget():
    candidates = [(32, 64, 128)] * 6 + [(32,)] * 2
    seen = []

    def fitness(sizes):
        seen.append(sizes)
        return -abs(np.mean(sizes) - 100) - 0.01 * sizes[0]  # prefers a mean near 100, a small first group

    result = evolve(candidates, fitness, population=12, epochs=5, max_evals=30, threshold=90.0, parents=4,
                    mutate_prob=0.2, seed=0)
    assert len(seen) == result.evals <= 30 and len(set(seen)) == len(seen)  # distinct candidates, within budget
    assert all(np.mean(s) >= 90.0 for s in seen)  # every candidate satisfies the constraint
    assert result.fitness == max(fitness(s) for s in set(seen))
    assert result.history == sorted(result.history)  # best-so-far never drops


def test_qdit_recipe_search_fold_round_trip_and_export(calibrated, tiny_model, tiny_reference, tmp_path):
    w8 = calibrated("qdit", **SEARCH)
    info = w8.calibration["method"]
    assert info["evaluations"] <= SEARCH["max_evals"]
    assert info["mean_group_size"] >= info["constraint_mean_group_at_least"] == 40
    assert w8.dynamic_activations and w8.num_groups == 1
    for site in w8.sites:
        for lin in site.linears:
            spec, k = w8.linear_spec(lin), w8.smooth(site.name).numel()
            assert info["group_sizes"][lin] in feasible_groups(k)
            assert spec.act in ("dynamic_token", "dynamic_group") and k % (spec.a_group or k) == 0
            assert spec.w_block == spec.a_group  # one group size for weights and activations
    assert_fold_exact(tiny_model, w8)
    assert_round_trip(w8, tmp_path / "rt")
    export_and_compare(tiny_model, w8, tiny_reference, tmp_path / "w8")
    w4 = calibrated("qdit", w_bits=4, **SEARCH)
    art = export_and_compare(tiny_model, w4, tiny_reference, tmp_path / "w4")
    assert len(int4_weight_dqs(art)) == sum(len(s.linears) for s in w4.sites)
