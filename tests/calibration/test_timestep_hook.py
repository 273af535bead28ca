"""The collector reads the timestep from the transformer's own call (no set_timestep), as a pipeline passes it."""

from __future__ import annotations

import pytest
import torch

from ditq.errors import DitqError


def test_the_collector_keys_statistics_on_the_timestep_each_call_passes(tiny_model):
    from ditq.calibration.stats import ActivationCollector
    from ditq.models.loading import quant_sites

    tr = tiny_model.transformer
    collector = ActivationCollector(tr, quant_sites(tr), timestep_from=tr)
    x, labels = torch.randn(2, 1, 8, 8), torch.tensor([1, 2])
    try:
        with torch.no_grad():
            tr(x, timestep=torch.tensor([900, 900]), class_labels=labels)
            tr(x, torch.tensor([17.0, 17.0]), labels)  # positional, float
            with pytest.raises(DitqError, match="share one finite timestep"):
                tr(x, timestep=torch.tensor([5, 9]), class_labels=labels)
    finally:
        collector.remove()
    assert collector.timesteps == [900, 17]
    with torch.no_grad():  # removed: later calls record nothing
        tr(x, timestep=torch.tensor([3, 3]), class_labels=labels)
    assert collector.timesteps == [900, 17]
