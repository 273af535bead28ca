"""``ditq triton``: every config.pbtxt parses with Triton's model-config schema and matches the artifact's manifest
(DiT and PixArt ONNX sets, an engine set); the router model routes a batch of requests exactly, bad ones refused."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from ditq.cli.main import main
from ditq.errors import DitqError

pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="pip install 'tritonclient[grpc]' (ditq[dev])")

from ditq.serve.triton import parse_config, write_repository


def _configs(repo: Path) -> dict[str, object]:
    return {p.parent.name: parse_config(p.read_text()) for p in sorted(repo.glob("*/config.pbtxt"))}


def _check(repo: Path, io: dict, intervals: list, platform: str, max_batch: int, instance_kind: int) -> None:
    from tritonclient.grpc import model_config_pb2 as pb

    configs = _configs(repo)
    groups = [f"transformer_group_{g}" for g in range(len(intervals))]
    assert sorted(configs) == sorted(["transformer", *groups])
    for name, cfg in configs.items():
        router = name == "transformer"
        assert cfg.name == name and cfg.max_batch_size == max_batch
        assert (cfg.backend, cfg.platform) == (("python", "") if router else ("", platform))
        assert cfg.HasField("dynamic_batching")
        kind = pb.ModelInstanceGroup.KIND_CPU if router else instance_kind
        assert [(g.kind, g.count) for g in cfg.instance_group] == [(kind, 1)]
        assert [i.name for i in cfg.input] == list(io["inputs"]) and [o.name for o in cfg.output] == ["sample"]
        for tensor in (*cfg.input, *cfg.output):
            spec = {**io["inputs"], **io["outputs"]}[tensor.name]
            dims = [d if isinstance(d, int) else -1 for d in spec["shape"][1:]]  # batch dim left out
            if dims:
                assert list(tensor.dims) == dims and not tensor.HasField("reshape")
            else:  # a [batch] tensor: [batch, 1] on the wire, [batch] for the graph
                assert list(tensor.dims) == [1] and tensor.HasField("reshape") and list(tensor.reshape.shape) == []
            want = {"float32": pb.TYPE_FP32, "float16": pb.TYPE_FP16, "int64": pb.TYPE_INT64}[spec["dtype"]]
            assert tensor.data_type == (pb.TYPE_FP32 if router and want == pb.TYPE_FP16 else want)
    params = {k: v.string_value for k, v in configs["transformer"].parameters.items()}
    assert json.loads(params["intervals"]) == [list(iv) for iv in intervals]
    assert json.loads(params["group_models"]) == groups


@pytest.mark.parametrize("which", ["tiny_onnx", "pixart_onnx"])
def test_onnx_repository_matches_the_manifest(which, request, tmp_path, capsys):
    art = request.getfixturevalue(which)
    from tritonclient.grpc import model_config_pb2 as pb

    out = tmp_path / "repo"
    assert main(["triton", str(art.root), "-o", str(out)]) == 0
    assert "triton: " in capsys.readouterr().out
    io = json.loads((art.root / "io.json").read_text())
    _check(out, io, art.intervals, "onnxruntime_onnx", 16, pb.ModelInstanceGroup.KIND_CPU)
    data = [out / f"transformer_group_{g.group_id}" / "1" / "weights.bin" for g in art.groups]
    assert len({p.stat().st_ino for p in data}) == 1  # the shared weights: one file, hard-linked per group
    for g in art.groups:
        assert (out / f"transformer_group_{g.group_id}" / "1" / "model.onnx").read_bytes() == art.path(
            g.group_id).read_bytes()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kind"] == "ditq.triton" and manifest["intervals"] == [list(iv) for iv in art.intervals]
    # the output rule: a second write needs --force, and then replaces it
    assert main(["triton", str(art.root), "-o", str(out)]) == 1
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert main(["triton", str(art.root), "-o", str(out), "--force", "--max-batch-size", "4"]) == 0
    assert all(c.max_batch_size == 4 for c in _configs(out).values())


def _fake_engine_set(root: Path, caption: bool) -> Path:
    from ditq.artifacts.engines import EngineArtifact, EngineGroup

    root.mkdir()
    groups = []
    for g, iv in enumerate([(0, 499), (500, 999)]):
        (root / f"group_{g}.plan").write_bytes(b"plan%d" % g)
        from ditq.artifacts import sha256_file

        groups.append(EngineGroup(g, iv, f"group_{g}.plan", sha256_file(root / f"group_{g}.plan"), f"group_{g}.onnx",
                                  "0" * 64, "polygraphy convert"))
    prof = {"hidden_states": {"min": [1, 4, 8, 8], "opt": [4, 4, 8, 8], "max": [8, 4, 8, 8]},
            "timestep": {"min": [1], "opt": [4], "max": [8]}}
    if caption:
        prof |= {"encoder_hidden_states": {"min": [1, 1, 24], "opt": [4, 12, 24], "max": [8, 120, 24]},
                 "encoder_attention_mask": {"min": [1, 1], "opt": [4, 12], "max": [8, 120]}}
    else:
        prof |= {"class_labels": {"min": [1], "opt": [4], "max": [8]}}
    EngineArtifact(root=root, trt_version="10.13.0", gpu_name="Fake GPU", compute_capability="sm_90",
                   precision="fp16", groups=tuple(groups), profile=prof, builder={}, onnx_dir=None,
                   parent_sha256="0" * 64, model={"kind": "pixart" if caption else "dit", "num_classes": 10},
                   scheduler_config={}, recipe={}).save()
    return root


@pytest.mark.parametrize("caption", [False, True], ids=["dit", "pixart"])
def test_engine_repository_matches_the_profile(caption, tmp_path):
    from tritonclient.grpc import model_config_pb2 as pb

    src = _fake_engine_set(tmp_path / "engines", caption)
    out = write_repository(src, tmp_path / "repo")
    half = {"dtype": "float16"}
    io = {"inputs": {"hidden_states": {**half, "shape": ["b", 4, 8, 8]}, "timestep": {**half, "shape": ["b"]}},
          "outputs": {"sample": {**half, "shape": ["b", 4, 8, 8]}}}
    if caption:
        io["inputs"] |= {"encoder_hidden_states": {**half, "shape": ["b", "L", 24]},
                         "encoder_attention_mask": {**half, "shape": ["b", "L"]}}
    else:
        io["inputs"]["class_labels"] = {"dtype": "int64", "shape": ["b"]}
    _check(out, io, [(0, 499), (500, 999)], "tensorrt_plan", 8, pb.ModelInstanceGroup.KIND_GPU)
    cfg = _configs(out)["transformer_group_1"]
    assert list(cfg.dynamic_batching.preferred_batch_size) == [4] and cfg.default_model_filename == "model.plan"
    assert (out / "transformer_group_1" / "1" / "model.plan").read_bytes() == b"plan1"
    with pytest.raises(DitqError, match=r"--max-batch-size 9 is out of range .* 1\.\.8"):
        write_repository(src, tmp_path / "repo2", max_batch_size=9)


def test_triton_refuses_a_directory_that_is_no_set(tiny_recipe_dir, tmp_path, capsys):
    assert main(["triton", str(tiny_recipe_dir), "-o", str(tmp_path / "repo")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is not an ONNX set" in err and "ditq.recipe" in err


# -- the router model, run with a stand-in for Triton's Python-backend utilities ---------------------------------

class _Tensor:
    def __init__(self, name, value):
        self._name, self._value = name, np.asarray(value)

    def name(self):
        return self._name

    def as_numpy(self):
        return self._value


class _Response:
    def __init__(self, output_tensors=(), error=None):
        self.outputs, self.error_ = list(output_tensors), error

    def has_error(self):
        return self.error_ is not None

    def error(self):
        return self.error_


class _Error:
    def __init__(self, msg):
        self.msg = msg

    def message(self):
        return self.msg


def _fake_pb(models):
    """``pb_utils`` with BLS served by ``models[name](feeds) -> sample``; records each BLS call's batch size."""
    pb = types.ModuleType("triton_python_backend_utils")
    pb.bls = []

    class InferenceRequest:
        def __init__(self, model_name, inputs, requested_output_names):
            self.model_name, self.inputs = model_name, {t.name(): t.as_numpy() for t in inputs}

        def exec(self):
            pb.bls.append((self.model_name, len(self.inputs["hidden_states"])))
            return _Response([_Tensor("sample", models[self.model_name](self.inputs))])

    pb.Tensor, pb.InferenceResponse, pb.TritonError, pb.InferenceRequest = _Tensor, _Response, _Error, InferenceRequest
    pb.get_input_tensor_by_name = lambda r, n: next((t for t in r if t.name() == n), None)
    pb.get_output_tensor_by_name = lambda r, n: next(t for t in r.outputs if t.name() == n)
    return pb


def test_router_model_routes_a_dynamic_batch_exactly_and_refuses_bad_requests_alone(tiny_onnx, tmp_path,
                                                                                    monkeypatch):
    from ditq.runtime.backends import open_backend

    repo = write_repository(tiny_onnx.root, tmp_path / "repo")
    backend, _ = open_backend(tiny_onnx.root, "onnxruntime", fuse=False)

    def group_model(g):  # what the group's ONNX model computes, fed as Triton feeds it ([batch, 1] tensors)
        def run(feeds):
            assert feeds["timestep"].shape[1:] == (1,) and feeds["class_labels"].dtype == np.int64
            x, t = torch.from_numpy(feeds["hidden_states"]), torch.from_numpy(feeds["timestep"][:, 0])
            return backend.fns[g](x, t, {"class_labels": torch.from_numpy(feeds["class_labels"][:, 0])}).numpy()
        return run

    pb = _fake_pb({f"transformer_group_{g}": group_model(g) for g in range(len(tiny_onnx.groups))})
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", pb)
    monkeypatch.syspath_prepend(str(repo / "transformer" / "1"))
    from ditq.serve import router_model

    model = router_model.TritonPythonModel()
    model.initialize({"model_config": json.dumps({
        "parameters": {k: {"string_value": v.string_value} for k, v in
                       parse_config((repo / "transformer" / "config.pbtxt").read_text()).parameters.items()},
        "output": [{"name": "sample"}]})})
    gen = torch.Generator().manual_seed(1)
    clients = [(990.0, 2), (10.0, 1), (float("nan"), 1), (500.0, 3), (990.0, 1), (1000.0, 1)]
    requests, rows = [], []
    for t, n in clients:
        x = torch.randn(n, 1, 8, 8, generator=gen)
        labels = torch.arange(n) % 11
        requests.append([_Tensor("hidden_states", x.numpy()), _Tensor("timestep", np.full((n, 1), t, np.float32)),
                         _Tensor("class_labels", labels.numpy().reshape(n, 1))])
        rows.append((x, torch.full((n,), t), labels))
    requests.append([_Tensor("hidden_states", np.zeros((1, 1, 8, 8), np.float32)),
                     _Tensor("timestep", np.full((1, 1), 10.0, np.float32)),
                     _Tensor("class_labels", np.array([[12]]))])  # an unknown class
    responses = model.execute(requests)
    assert len(responses) == len(requests)
    for i in (0, 1, 3, 4):
        x, t, labels = rows[i]
        want = torch.cat([backend(x[j:j + 1], t[j:j + 1], {"class_labels": labels[j:j + 1]}) for j in range(len(x))])
        assert not responses[i].has_error()
        torch.testing.assert_close(torch.from_numpy(responses[i].outputs[0].as_numpy()), want, rtol=1e-5, atol=1e-5)
    errors = {i: responses[i].error().message() for i in (2, 5, 6)}
    assert "NaN" in errors[2] and "outside the training timestep range [0, 999]" in errors[5]
    assert "class label 12 is out of range" in errors[6]
    assert all("\n" not in m for m in errors.values())
    # one BLS call per group present in the good rows (990: 3 rows, 500: 3, 10: 1), and the batch counted as mixed
    assert sorted(n for _, n in pb.bls) == [1, 3, 3] and model.mixed_batches == 1 and model.batches == 1
