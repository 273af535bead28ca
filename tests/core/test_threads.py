import pytest
import torch

from ditq.core.threads import torch_threads


def test_torch_threads_sets_the_count_and_gives_the_callers_back_on_errors_too():
    before = torch.get_num_threads()
    other = 1 if before != 1 else 2
    with torch_threads(other) as caller:
        assert caller == before and torch.get_num_threads() == other
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError), torch_threads(other):
        raise RuntimeError("boom")
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("n", [None, 0])
def test_torch_threads_without_a_count_leaves_the_callers(n):
    before = torch.get_num_threads()
    with torch_threads(n):
        assert torch.get_num_threads() == before
