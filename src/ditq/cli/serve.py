"""``ditq serve``: one ONNX set served locally through a real Triton server (PyTriton), routed by timestep group."""

from __future__ import annotations

import argparse
from pathlib import Path

from ditq.cli.args import int_range


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("artifact", help="an ONNX set from `ditq export`")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s, loopback only)")
    p.add_argument("--http-port", type=int_range(1, 65535), default=8000, help="default: %(default)s")
    p.add_argument("--grpc-port", type=int_range(1, 65535), default=8001, help="default: %(default)s")
    p.add_argument("--name", default="transformer", help="the served model's name (default: %(default)s)")
    p.add_argument("--max-batch-size", type=int_range(1, 4096), default=16, help="default: %(default)s")
    p.add_argument("--queue-delay-us", type=int_range(0, 10_000_000), default=2000,
                   help="dynamic batching's max_queue_delay_microseconds (default: %(default)s)")
    p.add_argument("--threads", type=int_range(1, 256), default=None, help="ONNX Runtime threads per group")
    p.add_argument("--python", default=None,
                   help="the serving interpreter (a venv from Debian's python3.11 with nvidia-pytriton; default: "
                        "$DITQ_SERVE_PYTHON, else .venv-serve/bin/python beside the package checkout)")


def run(args: argparse.Namespace) -> int:
    from ditq.serve.launch import ServeOptions, serve_forever

    opts = ServeOptions(artifact=Path(args.artifact), host=args.host, http_port=args.http_port,
                        grpc_port=args.grpc_port, name=args.name, max_batch_size=args.max_batch_size,
                        queue_delay_us=args.queue_delay_us, threads=args.threads)
    return serve_forever(opts, python=args.python)
