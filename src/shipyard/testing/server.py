"""Run a real ``shipyard serve`` process on loopback for a test, and stop it afterwards."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from shipyard.testing._ports import free_port
from shipyard.testing._process import stop_process


class ServerFailed(RuntimeError):
    """The server process exited or never became ready; carries its output."""


@dataclass
class RunningServer:
    url: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    grpc_port: int | None = None
    """The gRPC port when started with ``grpc=True``."""

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    @property
    def grpc_target(self) -> str:
        """``127.0.0.1:PORT`` of the gRPC listener (what tritonclient.grpc wants as its url)."""
        if self.grpc_port is None:
            raise ServerFailed("this server was started without gRPC; pass grpc=True to run_server")
        return f"127.0.0.1:{self.grpc_port}"


@contextlib.contextmanager
def run_server(
    home: Path,
    models: list[str] | tuple[str, ...] = (),
    *,
    args: list[str] | tuple[str, ...] = (),
    env: dict[str, str] | None = None,
    ready_timeout: float = 60.0,
    grpc: bool = False,
) -> Iterator[RunningServer]:
    """Start ``python -m shipyard serve MODELS`` on 127.0.0.1 and a free port.

    Waits until ``/v2/health/ready`` answers 200 (polling against a deadline),
    yields the running server, and always stops it: SIGTERM, then SIGKILL if
    it has not exited within 10 seconds. ``grpc=True`` also serves gRPC on another
    free port (``--grpc-port``, extra ``grpc``); it is listening once REST is ready.
    """
    port = free_port()
    log_path = home.parent / f"shipyard-serve-{port}.log"
    full_env = {**os.environ, "SHIPYARD_HOME": str(home), **(env or {})}
    cmd = [sys.executable, "-m", "shipyard", "serve", *models, "--host", "127.0.0.1", "--port", str(port), *args]
    grpc_port = free_port() if grpc else None
    if grpc_port is not None:
        cmd += ["--grpc-port", str(grpc_port)]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=full_env)
    server = RunningServer(f"http://127.0.0.1:{port}", port, proc, log_path, grpc_port)
    try:
        _wait_ready(server, ready_timeout)
        yield server
    finally:
        stop_process(proc, "shipyard serve", grace=10)


def _wait_ready(server: RunningServer, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise ServerFailed(f"shipyard serve exited with {server.process.returncode}:\n{server.log()}")
        try:
            with urllib.request.urlopen(f"{server.url}/v2/health/ready", timeout=1) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, OSError):
            pass
        time.sleep(0.05)
    raise ServerFailed(f"shipyard serve was not ready within {timeout:.0f}s:\n{server.log()}")
