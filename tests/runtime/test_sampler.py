import pytest
import torch

from ditq.core.sampler import make_scheduler, sample
from ditq.errors import DitqError
from ditq.runtime.backends import GroupedBackend, torch_backend


def _recording_backend(intervals):
    seen: list[tuple[float, int]] = []

    def fn(g):
        def run(x, t, y):
            seen.append((float(t[0]), g))
            return torch.zeros_like(x)

        return run

    return GroupedBackend("rec", intervals, [fn(g) for g in range(len(intervals))]), seen


@pytest.mark.parametrize("scheduler,steps", [("ddpm", 100), ("ddim", 25), ("ddim", 37), ("dpmsolver", 20)])
def test_group_is_chosen_by_timestep_interval_for_any_step_count(tiny_recipe, tiny_model, scheduler, steps):
    backend, seen = _recording_backend([g.interval for g in tiny_recipe.groups])
    sample(backend, make_scheduler(tiny_model.scheduler_config, scheduler), tiny_model.cond([1, 2]), steps=steps,
           cfg_scale=2.0, null_cond=tiny_model.null_cond(), sample_shape=(1, 8, 8))
    assert len(seen) == steps
    for t, g in seen:
        lo, hi = tiny_recipe.groups[g].interval
        assert lo <= round(t) <= hi
        assert tiny_recipe.group_of(t) == g
    assert sum(backend.calls) == steps and all(c > 0 for c in backend.calls)


def test_same_seed_gives_same_noise_whatever_the_denoiser(tiny_model):
    sched = make_scheduler(tiny_model.scheduler_config)
    fp = torch_backend(tiny_model, None)
    kw = dict(steps=10, cfg_scale=3.0, null_cond=tiny_model.null_cond(), sample_shape=(1, 8, 8), seed=7)
    a = sample(fp, sched, tiny_model.cond([3]), **kw)
    b = sample(fp, sched, tiny_model.cond([3]), **kw)
    assert torch.equal(a, b)


def test_outside_every_interval_is_an_error():
    backend, _ = _recording_backend([(0, 499), (500, 999)])
    with pytest.raises(DitqError):
        backend.group_of(1000)


def test_unknown_scheduler_is_an_error(tiny_model):
    with pytest.raises(DitqError, match="unknown scheduler"):
        make_scheduler(tiny_model.scheduler_config, "euler-magic")
