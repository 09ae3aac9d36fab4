"""A real, throwaway Redis server on 127.0.0.1 for tests.

Example (pytest)::

    @pytest.fixture(scope="module")
    def redis_url(tmp_path_factory):
        with contextlib.ExitStack() as stack:
            try:
                url = stack.enter_context(redis_server(tmp_path_factory.mktemp("redis")))
            except RedisUnavailable as exc:
                pytest.skip(str(exc))
            yield url

The server listens on loopback only, on a free port, keeps nothing on disk
(``--save "" --appendonly no``; its working folder and log are under the
caller's folder) and is stopped when the block exits: SIGTERM, then SIGKILL.
It comes up in a few hundredths of a second. Readiness is checked with a raw
``PING`` over TCP, so this module needs no Redis client library.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

from shipyard.testing._ports import free_port
from shipyard.testing._process import ServiceUnavailable, log_size, log_tail, stop_process

logger = logging.getLogger(__name__)

_DEBIAN_BINARY = "/usr/bin/redis-server"
_START_ATTEMPTS = 3
_STOP_GRACE = 5.0


class RedisUnavailable(ServiceUnavailable):
    """Redis cannot be started here because something is missing."""

    service = "Redis"
    default_hint = "install it with: apt-get install -y --no-install-recommends redis-server"


def find_redis_server() -> Path:
    """The ``redis-server`` binary: on ``PATH``, else the Debian package's ``/usr/bin/redis-server``.

    Raises:
        RedisUnavailable: neither exists.
    """
    found = shutil.which("redis-server")
    if found:
        return Path(found)
    if os.access(_DEBIAN_BINARY, os.X_OK):
        return Path(_DEBIAN_BINARY)
    raise RedisUnavailable(f"no redis-server binary (looked on PATH and at {_DEBIAN_BINARY})")


@contextmanager
def redis_server(folder: Path, *, password: str | None = None, timeout: float = 20.0) -> Iterator[str]:
    """Run a throwaway Redis server on 127.0.0.1 for the duration of the block.

    Args:
        folder: a folder for the server's working directory and log.
        password: when given, clients must authenticate (``requirepass``); the
            yielded URL then carries it (``redis://:PASSWORD@127.0.0.1:PORT``).
        timeout: seconds allowed for start-up.

    Yields:
        The base URL ``redis://127.0.0.1:PORT`` (append ``/STREAM`` for a stream URL).

    Raises:
        RedisUnavailable: ``redis-server`` is not installed; the message says how to get it.
        RuntimeError: it is installed but did not start; the message holds the end of its log.
    """
    binary = find_redis_server()
    work = Path(folder)
    work.mkdir(parents=True, exist_ok=True)
    process, port = _start(binary, work, password, timeout)
    try:
        logger.info("Redis up on 127.0.0.1:%d (folder %s)", port, work)
        auth = f":{quote(password, safe='')}@" if password else ""
        yield f"redis://{auth}127.0.0.1:{port}"
    finally:
        stop_process(process, "Redis", grace=_STOP_GRACE)


def _start(binary: Path, work: Path, password: str | None, timeout: float) -> tuple[subprocess.Popen[bytes], int]:
    """Start on a free port, retrying when another process took the port first."""
    log = work / "redis.log"
    for attempt in range(1, _START_ATTEMPTS + 1):
        port = free_port()
        log_start = log_size(log)
        cmd = [
            str(binary), "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
            "--dir", str(work), "--daemonize", "no", "--protected-mode", "yes", "--logfile", str(log),
        ]
        if password:
            cmd += ["--requirepass", password]
        process = subprocess.Popen(cmd, cwd=work, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while process.poll() is None and time.monotonic() < deadline:
            if _answers(port):
                return process, port
            time.sleep(0.02)
        stop_process(process, "Redis", grace=_STOP_GRACE)
        tail = log_tail(log, since=log_start)
        if "Address already in use" in tail and attempt < _START_ATTEMPTS:
            logger.info("port %d was taken before Redis bound it; retrying", port)
            continue
        raise RuntimeError(f"Redis did not start on 127.0.0.1:{port} (exit code {process.returncode}); "
                           f"last lines of {log}:\n{tail}")
    raise AssertionError("unreachable")  # pragma: no cover


def _answers(port: int) -> bool:
    """Whether something on the port speaks Redis (a PING gets +PONG, or -NOAUTH with a password)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as conn:
            conn.sendall(b"PING\r\n")
            reply = conn.recv(64)
    except OSError:
        return False
    return reply.startswith((b"+PONG", b"-NOAUTH"))
