"""The tensorrt backend's orchestration against the fake TensorRT (conftest): CUDA graph replay with alternating
batch sizes, and the one process-wide TensorRT logger shared by the runtime and the build."""

from __future__ import annotations

import types

import pytest
import torch

from ditq.engines import BuildConfig, build_engines
from ditq.errors import DitqError


def _runner(fake_trt, cuda_graphs: bool):
    from ditq.runtime.backends.tensorrt import EngineRunner

    stream = types.SimpleNamespace(cuda_stream=0, synchronize=lambda: None)
    engine = fake_trt.FakeEngine()
    return engine, EngineRunner(engine, torch.empty(1024, dtype=torch.uint8), stream, (1, 8), cuda_graphs)


def _call(runner, batch: int) -> torch.Tensor:
    return runner(torch.randn(batch, 4, 8, 8), torch.full((batch,), 500.0), {"class_labels": torch.zeros(batch)})


def test_cuda_graph_replay_keeps_each_batch_bindings_when_batches_alternate(fake_trt, fake_cuda):
    engine, runner = _runner(fake_trt, cuda_graphs=True)
    batches = [2, 4, 2, 4, 8, 2, 8, 4]
    for batch in batches:
        assert _call(runner, batch).shape == (batch, 4, 8, 8)
    assert sorted(runner.graphs) == [2, 4, 8] and len(fake_cuda) == 3
    for graph in fake_cuda:
        (context, seen), = graph.captured
        batch = seen["shapes"]["hidden_states"][0]
        assert all(shape[0] == batch for shape in seen["shapes"].values())
        assert seen["addresses"] == {n: t.data_ptr() for n, t in runner.io[batch].items()}
        assert graph.replays and all(graph.replays), f"batch {batch} replayed on bindings of another batch"
    assert sum(len(g.replays) for g in fake_cuda) == len(batches) - 3
    # each captured batch has its own context, all on the one shared activation buffer
    assert len({id(c) for c in engine.contexts}) == 3
    assert {c.memory for c in engine.contexts} == {(runner.scratch.data_ptr(), 1024)}


def test_plain_runs_rebind_the_shared_context_for_every_batch(fake_trt, fake_cuda):
    engine, runner = _runner(fake_trt, cuda_graphs=False)
    for batch in [2, 4, 2, 1]:
        _call(runner, batch)
        assert runner.context.runs[-1]["shapes"]["hidden_states"][0] == batch
        assert runner.context.runs[-1]["addresses"]["out"] == runner.io[batch]["out"].data_ptr()
    assert len(engine.contexts) == 1 and not fake_cuda


def test_runtime_and_build_share_the_one_tensorrt_logger(fake_trt, tiny_onnx, tmp_path):
    """TensorRT keeps the first logger it is given: a Runtime made before a build must not hide the build's errors."""
    from ditq.runtime.backends.tensorrt import load_runners

    plan = tmp_path / "group_0.plan"
    plan.write_bytes(b"PLAN")
    art = types.SimpleNamespace(groups=[types.SimpleNamespace(group_id=0)], path=lambda g: plan,
                                rebuild_hint=lambda: "rebuild it with `ditq build`", batch_range=(1, 8))
    fake_trt.fail_deserialize = True
    with pytest.raises(DitqError, match=r"cannot deserialize .*group_0\.plan \(plan built by another TensorRT\)"):
        load_runners(art)  # type: ignore[arg-type]
    fake_trt.fail_build = {"group_0"}
    with pytest.raises(DitqError, match=r"TensorRT failed to build group_0\.onnx: out of memory$"):
        build_engines(tiny_onnx, tmp_path / "engines", BuildConfig(), progress=False)
