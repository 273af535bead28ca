"""The serving process: one ONNX set behind a real Triton server (PyTriton), run by the serving interpreter.

``python -m ditq.serve.server ARTIFACT ...`` (``ditq serve`` starts it; see ``ditq.serve.launch``) imports neither
torch nor diffusers: the serving interpreter is a venv of Debian's ``python3.11`` with ``nvidia-pytriton``,
``onnxruntime`` and numpy (PyTriton's Python-backend stub fails under other builds of 3.11, e.g. pyenv's 3.11.7).

What it serves, the same models ``ditq triton`` writes:

- ``NAME_group_{g}``: one PyTriton model per timestep group, its ONNX graph on ONNX Runtime (CPU), with Triton's
  dynamic batching;
- ``NAME``: the router, the repository's own Python-backend model (``ditq.serve.router_model`` with its
  ``config.pbtxt``), loaded into the same server through Triton's model-load API. It has the transformer's
  signature, checks each request, and sends each row to its group's model through BLS.
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import logging
import signal
import sys
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("ditq.serve")
_NP = {"TYPE_FP32": np.float32, "TYPE_FP16": np.float16, "TYPE_INT64": np.int64, "TYPE_INT32": np.int32}


def ort_session(path: Path, threads: int | None, fuse: bool) -> Any:
    """A CPU session as ``ditq.runtime.backends.onnxruntime.ort_session`` makes it (``fuse=False``: exact Q/DQ)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if fuse
                                     else ort.GraphOptimizationLevel.ORT_ENABLE_BASIC)
    if threads:
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"],
                                disabled_optimizers=["CommonSubexpressionElimination"])


def group_infer(session: Any, inputs: list[Any]) -> Any:
    """A PyTriton infer function: one batched call of the group's graph ([batch, 1] tensors back to [batch])."""
    from pytriton.decorators import batch

    @batch
    def infer(**feeds: np.ndarray) -> dict[str, np.ndarray]:
        run = {}
        for spec in inputs:
            value = feeds[spec.name]
            run[spec.name] = value.reshape(-1) if spec.batch_only else value
        return {"sample": session.run(None, run)[0].astype(np.float32, copy=False)}

    return infer


def router_load_config(text: str) -> str:
    """A ``config.pbtxt`` as the JSON Triton's model-load API takes."""
    from google.protobuf import json_format, text_format
    from tritonclient.grpc import model_config_pb2

    cfg = text_format.Parse(text, model_config_pb2.ModelConfig())
    return json_format.MessageToJson(cfg, preserving_proto_field_name=True)


def check_ports(host: str, ports: list[int]) -> None:
    """Refuse ports already taken, or one port given twice: PyTriton waits forever when tritonserver cannot bind."""
    import socket

    if len(set(ports)) != len(ports):
        raise SystemExit(f"ditq serve: error: the HTTP and gRPC ports must differ, got {ports}")
    for port in ports:
        with socket.socket() as sock:
            try:
                sock.bind((host, port))
            except OSError as err:
                raise SystemExit(f"ditq serve: error: cannot listen on {host}:{port} ({err.strerror}); pick another "
                                 "port") from None


def serve(args: argparse.Namespace) -> None:
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig
    from tritonclient.http import InferenceServerClient

    from ditq.serve.triton import read_set, router_config, router_files

    check_ports(args.host, [args.http_port, args.grpc_port])
    info = read_set(Path(args.artifact))
    if info.kind != "onnx":
        raise SystemExit(f"ditq serve: error: {args.artifact} is an engine set; serve an ONNX set (engine sets "
                         "go to a GPU Triton through `ditq triton`)")
    groups = [f"{args.name}_group_{g}" for g in range(len(info.intervals))]
    config = TritonConfig(http_address=args.host, http_port=args.http_port, grpc_address=args.host,
                          grpc_port=args.grpc_port, allow_metrics=False, exit_on_error=True, exit_timeout_secs=5,
                          log_file=Path(args.triton_log) if args.triton_log else None)
    triton = Triton(config=config)
    stop = False

    def on_signal(signum: int, frame: Any) -> None:
        nonlocal stop
        stop = True
        triton.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    with triton:
        for g, name in enumerate(groups):
            session = ort_session(info.files[g], args.threads, args.fuse)
            triton.bind(
                model_name=name, infer_func=group_infer(session, info.inputs),
                inputs=[Tensor(name=s.name, dtype=_NP[s.data_type], shape=(1,) if s.batch_only else s.dims)
                        for s in info.inputs],
                outputs=[Tensor(name="sample", dtype=np.float32, shape=info.outputs[0].dims)],
                config=ModelConfig(max_batch_size=args.max_batch_size,
                                   batcher=DynamicBatcher(max_queue_delay_microseconds=args.queue_delay_us)),
                strict=False)
        triton.run()
        # the router: the repository's Python-backend model, through the model-load API (which PyTriton guards
        # with its access token)
        client = InferenceServerClient(f"{args.host}:{args.http_port}")
        headers = {"triton-access-token": triton.get_access_token()}
        text = router_config(info, args.name, groups, args.max_batch_size, args.queue_delay_us, 1,
                             stats_path=args.stats_path)
        try:
            client.load_model(args.name, config=router_load_config(text), headers=headers,
                              files={f"file:1/{k}": v.encode() for k, v in router_files().items()})
            ready = client.is_model_ready(args.name)
        finally:
            client.close()
        if not ready:
            raise SystemExit(f"ditq serve: error: the router model {args.name} did not load; see the log above")
        print(json.dumps({"ready": True, "model": args.name, "groups": groups,
                          "http": f"{args.host}:{args.http_port}", "grpc": f"{args.host}:{args.grpc_port}"}),
              flush=True)
        faulthandler.cancel_dump_traceback_later()
        if not stop:
            triton.serve()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m ditq.serve.server")
    p.add_argument("artifact")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--http-port", type=int, default=8000)
    p.add_argument("--grpc-port", type=int, default=8001)
    p.add_argument("--name", default="transformer")
    p.add_argument("--max-batch-size", type=int, default=16)
    p.add_argument("--queue-delay-us", type=int, default=2000)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--triton-log", default=None, help="tritonserver's log file (default: PyTriton keeps it)")
    p.add_argument("--stats-path", default=None, help="a file where the router keeps its batch counters")
    p.add_argument("--fuse", action="store_true", help="ONNX Runtime's fused integer kernels (default: exact Q/DQ)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    faulthandler.dump_traceback_later(60)  # a start that hangs leaves its stacks in the log; cancelled when ready
    serve(args)


if __name__ == "__main__":
    main()
