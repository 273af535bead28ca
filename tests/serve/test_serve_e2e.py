"""``ditq serve``: a real Triton server (PyTriton, in the serving venv) on the tiny model's ONNX set, sampled
client-side through tritonclient over HTTP on 127.0.0.1, equals in-process sampling; bad requests get one-line
errors and the server keeps serving. In CI (CI=true) the serving venv must be there (``.ci/serve-venv``)."""

from __future__ import annotations

import os
import socket
import threading

import numpy as np
import pytest
import torch

from ditq.errors import DitqError

http = pytest.importorskip("tritonclient.http", reason="pip install 'tritonclient[http]' (ditq[dev])")


def _serving_python():
    from ditq.serve.launch import serving_python

    try:
        return serving_python()
    except DitqError as err:
        if os.environ.get("CI", "").lower() == "true":
            raise  # CI must run this test: .ci/run prepares the serving venv
        pytest.skip(f"not in CI and no serving venv: {err}")


def _free_ports(n: int) -> list[int]:
    """``n`` distinct free ports on 127.0.0.1 (held together while picked: one at a time may repeat a port)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@pytest.fixture(scope="module")
def server(tiny_onnx, tmp_path_factory):
    from ditq.serve.launch import ServeOptions, start_server

    python = _serving_python()
    http_port, grpc_port = _free_ports(2)
    opts = ServeOptions(tiny_onnx.root, http_port=http_port, grpc_port=grpc_port, max_batch_size=16,
                        queue_delay_us=20_000, threads=1,
                        stats_path=tmp_path_factory.mktemp("serve") / "router-stats.json")
    with start_server(opts, python=python, ready_timeout_s=180) as srv:
        yield srv
    assert srv.process.poll() is not None  # stopped


def _infer(client, x, t, labels):
    inputs = []
    for name, value in (("hidden_states", x), ("timestep", t.reshape(-1, 1)), ("class_labels", labels.reshape(-1, 1))):
        tensor = http.InferInput(name, list(value.shape), "INT64" if value.dtype == np.int64 else "FP32")
        tensor.set_data_from_numpy(value)
        inputs.append(tensor)
    return client.infer("transformer", inputs).as_numpy("sample")


def _denoise(client):
    def run(x, t, cond):
        out = _infer(client, x.numpy().astype(np.float32), t.numpy().astype(np.float32),
                     cond["class_labels"].numpy().astype(np.int64))
        return torch.from_numpy(out.copy())
    return run


def _sample(denoise, art, seed, steps, classes):
    from ditq.core.sampler import make_scheduler, sample

    null = art.model["null_class"]
    return sample(denoise, make_scheduler(art.scheduler_config, "ddim"), {"class_labels": torch.tensor(classes)},
                  steps=steps, cfg_scale=3.0, null_cond={"class_labels": torch.tensor([null])},
                  sample_shape=tuple(art.model["sample_shape"]), seed=seed)


def test_client_side_sampling_through_triton_equals_in_process(server, tiny_onnx):
    """Three clients sample at once (different step counts: their rows sit at different timesteps, and Triton's
    batcher mixes them); each gets exactly what in-process sampling gives."""
    from ditq.runtime.backends import open_backend

    backend, _ = open_backend(tiny_onnx.root, "onnxruntime", fuse=False)
    jobs = [(0, 8, [1, 7]), (1, 5, [3]), (2, 12, [0, 9])]
    results: dict[int, torch.Tensor] = {}
    errors: list[BaseException] = []

    def client_job(seed, steps, classes):
        try:
            with http.InferenceServerClient(server.http_url, network_timeout=30) as client:
                results[seed] = _sample(_denoise(client), tiny_onnx, seed, steps, classes)
        except BaseException as err:  # reported below, in the test's thread
            errors.append(err)

    threads = [threading.Thread(target=client_job, args=job) for job in jobs]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=60)
    assert not errors and all(not th.is_alive() for th in threads)
    for seed, steps, classes in jobs:
        want = _sample(backend, tiny_onnx, seed, steps, classes)
        torch.testing.assert_close(results[seed], want, rtol=1e-4, atol=1e-4)


def test_bad_requests_get_one_line_errors_and_the_server_keeps_serving(server):
    from tritonclient.utils import InferenceServerException

    x = np.zeros((2, 1, 8, 8), np.float32)
    good = (x, np.array([10.0, 900.0], np.float32), np.array([1, 2]))
    bad = {
        "NaN": (x.copy() * np.nan, good[1], good[2]),
        "outside the training timestep range [0, 999]": (x, np.array([10.0, 1000.0], np.float32), good[2]),
        "class label 12 is out of range": (x, good[1], np.array([1, 12])),
        "unexpected shape": (np.zeros((2, 2, 8, 8), np.float32), good[1], good[2]),
        "FP64": (x.astype(np.float64), good[1], good[2]),
    }
    with http.InferenceServerClient(server.http_url, network_timeout=30) as client:
        want = _infer(client, *good)
        for needle, (bx, bt, bl) in bad.items():
            if bx.dtype == np.float64:  # a wrong dtype: built by hand (the helper declares FP32)
                inputs = [http.InferInput("hidden_states", list(bx.shape), "FP64"),
                          http.InferInput("timestep", [2, 1], "FP32"), http.InferInput("class_labels", [2, 1], "INT64")]
                for tensor, value in zip(inputs, (bx, bt.reshape(-1, 1), bl.reshape(-1, 1))):
                    tensor.set_data_from_numpy(value)
                call = lambda inputs=inputs: client.infer("transformer", inputs)  # noqa: E731
            else:
                call = lambda bx=bx, bt=bt, bl=bl: _infer(client, bx, bt, bl)  # noqa: E731
            with pytest.raises(InferenceServerException) as info:
                call()
            message = str(info.value)
            assert needle in message and "\n" not in message, message
        np.testing.assert_array_equal(_infer(client, *good), want)  # still serving, same answer
        assert client.is_model_ready("transformer")


def test_a_short_load_loses_nothing_and_counts_router_batches(server, tiny_onnx):
    from ditq.serve.bench import ServeBenchConfig, format_markdown, run_load

    config = ServeBenchConfig(clients=(1, 3), steps=3, loops=1, timeout_s=60)
    rows = run_load(server.http_url, tiny_onnx, config, server.stats_path)
    for row in rows:
        assert row["failed"] == row["lost"] == row["hung_clients"] == 0
        assert row["requests"] == row["expected_requests"] == row["clients"] * 3 and row["steps_per_s"] > 0
        assert 1 <= row["router_batches"] <= row["requests"]
        assert 0 <= row["mixed_group_batches"] <= row["router_batches"]
    assert "| 3 |" in format_markdown({"artifact": "x", "host": "h", "config": config.__dict__, "rows": rows})


def test_serve_refuses_what_it_cannot_serve_in_one_line(tiny_recipe_dir, tiny_onnx, tmp_path, capsys):
    from ditq.cli.main import main

    assert main(["serve", str(tiny_recipe_dir)]) == 1
    assert "needs an ONNX set from `ditq export`" in capsys.readouterr().err
    assert main(["serve", str(tiny_onnx.root), "--python", str(tmp_path / "none" / "python")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "serving interpreter" in err and ".ci/serve-venv" in err


def test_a_taken_port_fails_fast_in_one_line(tiny_onnx):
    from ditq.serve.launch import ServeOptions, start_server

    python = _serving_python()
    port, other = _free_ports(2)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        with pytest.raises(DitqError, match=rf"the Triton server exited .*cannot listen on 127.0.0.1:{port}"), \
                start_server(ServeOptions(tiny_onnx.root, http_port=other, grpc_port=port), python=python,
                             ready_timeout_s=60):
            pass


def test_a_client_that_disconnects_mid_loop_costs_nothing(server, tiny_onnx):
    """One client drops its connection in the middle of a request body, another walks away after two steps of its
    sampling loop; the server keeps serving, and a full loop afterwards is exactly the in-process result."""
    from urllib.parse import urlparse

    from ditq.runtime.backends import open_backend

    url = urlparse(server.http_url if "://" in server.http_url else f"http://{server.http_url}")
    with socket.create_connection((url.hostname, url.port), timeout=10) as raw:  # half a request, then gone
        raw.sendall(b"POST /v2/models/transformer/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    b"Content-Length: 100000\r\n\r\n{\"inputs\": [")
    with http.InferenceServerClient(server.http_url, network_timeout=30) as client:  # two steps of a loop, then gone
        x = np.random.default_rng(0).standard_normal((2, 1, 8, 8)).astype(np.float32)
        for t in (999.0, 949.0):
            _infer(client, x, np.array([t, t], np.float32), np.array([1, 10]))
    backend, _ = open_backend(tiny_onnx.root, "onnxruntime", fuse=False)
    with http.InferenceServerClient(server.http_url, network_timeout=30) as client:
        assert client.is_server_live() and client.is_model_ready("transformer")
        got = _sample(_denoise(client), tiny_onnx, 3, 6, [4])
    torch.testing.assert_close(got, _sample(backend, tiny_onnx, 3, 6, [4]), rtol=1e-4, atol=1e-4)
