"""Start and stop the serving process (``ditq.serve.server``) from any interpreter.

PyTriton's Triton Python-backend stub needs a CPython 3.11 it was built against: Debian's ``/usr/bin/python3.11``
works, pyenv's 3.11.7 fails at model load (``'_thread.RLock' object has no attribute '_recursion_count'``). So the
server runs in its own interpreter, the *serving venv* (``.ci/serve-venv`` makes one: Debian's python3.11,
nvidia-pytriton, onnxruntime), with this package's source on ``PYTHONPATH``; the caller (``ditq serve``, the tests,
``ditq bench serve``) may be any Python. :func:`serving_python` finds it: ``--python``, else ``$DITQ_SERVE_PYTHON``,
else ``.venv-serve/bin/python`` in the source checkout.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ditq.errors import DitqError

log = logging.getLogger(__name__)

SRC = Path(__file__).resolve().parents[2]  # the directory holding the ditq package
VENV = SRC.parent / ".venv-serve"
_FAILED = "Triton Inference Server exited with failure"  # PyTriton's line; it then waits instead of exiting


@dataclass(frozen=True)
class ServeOptions:
    artifact: Path
    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    name: str = "transformer"
    max_batch_size: int = 16
    queue_delay_us: int = 2000
    threads: int | None = None
    fuse: bool = False  # exact Q/DQ by default: the numerics of in-process sampling and TensorRT
    stats_path: Path | None = None  # where the router keeps its batch counters (``ditq bench serve``)

    def argv(self) -> list[str]:
        args = [str(self.artifact), "--host", self.host, "--http-port", str(self.http_port), "--grpc-port",
                str(self.grpc_port), "--name", self.name, "--max-batch-size", str(self.max_batch_size),
                "--queue-delay-us", str(self.queue_delay_us)]
        args += ["--threads", str(self.threads)] if self.threads else []
        args += ["--stats-path", str(self.stats_path)] if self.stats_path else []
        return args + (["--fuse"] if self.fuse else [])


def serving_python(python: str | Path | None = None) -> Path:
    """The serving interpreter, or a DitqError saying how to make one."""
    found = python or os.environ.get("DITQ_SERVE_PYTHON") or VENV / "bin" / "python"
    path = Path(found)
    if not path.is_file():
        raise DitqError(f"the serving interpreter {path} does not exist; make it with `.ci/serve-venv` (a venv of "
                        "Debian's /usr/bin/python3.11 with nvidia-pytriton and onnxruntime) or pass --python / set "
                        "DITQ_SERVE_PYTHON")
    return path


@dataclass
class Server:
    """A running server: its process, URLs and log file."""

    process: subprocess.Popen[bytes]
    http_url: str
    grpc_url: str
    model: str
    log_path: Path
    stats_path: Path | None = None

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of the server's own log and of tritonserver's (``LOG.triton.log``)."""
        out = []
        for path in (self.log_path, self.log_path.with_suffix(".triton.log")):
            try:
                out += path.read_text(errors="replace").splitlines()[-lines:]
            except OSError:
                pass
        return "\n".join(out)


def check_artifact(path: Path) -> None:
    from ditq.artifacts import manifest_kind
    from ditq.artifacts.onnx import OnnxArtifact

    kind = manifest_kind(Path(path)) if (Path(path) / "manifest.json").is_file() else None
    if kind != OnnxArtifact.KIND:
        raise DitqError(f"ditq serve needs an ONNX set from `ditq export`, got {path}"
                        f"{f' (a {kind})' if kind else ''}; engine sets go to a GPU Triton through `ditq triton`")
    OnnxArtifact.load(Path(path))  # a damaged set fails here, in one line, not inside the server


@contextlib.contextmanager
def start_server(opts: ServeOptions, *, python: str | Path | None = None, ready_timeout_s: float = 120.0,
                 log_path: Path | None = None) -> Iterator[Server]:
    """Start the server, wait (bounded) until its router model is ready, yield it; always stop it on exit."""
    check_artifact(opts.artifact)
    exe = serving_python(python)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), *filter(None, [os.environ.get("PYTHONPATH")])])}
    env.pop("PYTHONHOME", None)
    if log_path is None:
        fd, name = tempfile.mkstemp(prefix="ditq-serve-", suffix=".log")
        os.close(fd)
        log_path = Path(name)
    logfile = log_path
    triton_log = logfile.with_suffix(".triton.log")
    argv = [*opts.argv(), "--triton-log", str(triton_log)]
    with open(logfile, "wb") as err, subprocess.Popen([str(exe), "-m", "ditq.serve.server", *argv],
                                                      stdout=subprocess.PIPE, stderr=err, env=env,
                                                      start_new_session=True) as proc:
        server = Server(proc, f"{opts.host}:{opts.http_port}", f"{opts.host}:{opts.grpc_port}", opts.name, logfile,
                        opts.stats_path)
        try:
            _wait_ready(server, ready_timeout_s)
            yield server
        finally:
            stop_server(server)


def _wait_ready(server: Server, timeout_s: float) -> None:
    """Read the server's stdout until its ready line (bounded by ``timeout_s``); DitqError if it dies first."""
    import selectors

    assert server.process.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(server.process.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout_s
    buf = b""
    while time.monotonic() < deadline:
        if sel.select(timeout=0.5):
            chunk = os.read(server.process.stdout.fileno(), 65536)
            if not chunk:
                break
            buf += chunk
            for line in buf.splitlines():
                if line.startswith(b"{") and json.loads(line).get("ready"):
                    return
        elif server.process.poll() is not None or _FAILED in server.log_tail(5):
            break
    with contextlib.suppress(subprocess.TimeoutExpired):  # its stdout closed: it is exiting
        server.process.wait(2)
    reason = ("exited" if server.process.poll() is not None or _FAILED in server.log_tail(5)
              else f"was not ready after {timeout_s:.0f} s")
    last = " | ".join(x for x in server.log_tail(3).splitlines() if x.strip())[-300:]
    raise DitqError(f"the Triton server {reason} (log: {server.log_path}): {last}")


def stop_server(server: Server, timeout_s: float = 20.0) -> None:
    """SIGTERM the serving process (PyTriton stops tritonserver and its stubs); then SIGKILL whatever is left of
    its process group (its own session: only what it started)."""
    proc = server.process
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            log.warning("the Triton server did not stop in %.0f s; killing it", timeout_s)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)


def serve_forever(opts: ServeOptions, *, python: str | Path | None = None) -> int:
    """``ditq serve``: start, say where, and serve until Ctrl-C (or SIGTERM, which the CLI turns into one)."""
    with start_server(opts, python=python) as server:
        print(f"serving {opts.artifact} as model {opts.name!r}: http://{server.http_url}  grpc {server.grpc_url}  "
              f"(log: {server.log_path}; Ctrl-C stops)", flush=True)
        try:
            while server.process.poll() is None:
                time.sleep(0.5)
        except KeyboardInterrupt:
            return 0
        raise DitqError(f"the Triton server exited with status {server.process.returncode}; see {server.log_path}")
