"""A real HAProxy load balancer on 127.0.0.1 in front of several ``shipyard serve`` replicas, for tests.

It balances round-robin over the backends, takes a backend out of rotation when ``/v2/health/ready`` stops
answering 200, and retries a request on another backend when its connection fails or its backend dies
before answering (``retry-on``), the way a production balancer in front of replicas should. Requests are
buffered before they are sent (``http-buffer-request``), so a POST can be retried too.
"""

from __future__ import annotations

import logging
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from shipyard.testing._ports import free_port
from shipyard.testing._process import ServiceUnavailable, log_tail, stop_process

logger = logging.getLogger(__name__)

_DEBIAN_BINARY = "/usr/sbin/haproxy"


class HaproxyUnavailable(ServiceUnavailable):
    """HAProxy cannot be started here because it is not installed."""

    service = "HAProxy"
    default_hint = "install it with: apt-get install -y --no-install-recommends haproxy"


def find_haproxy() -> Path:
    """``haproxy`` on ``PATH``, else the Debian package's ``/usr/sbin/haproxy``.

    Raises:
        HaproxyUnavailable: neither exists.
    """
    found = shutil.which("haproxy") or (shutil.which("haproxy", path="/usr/sbin"))
    if found is None:
        raise HaproxyUnavailable(f"no haproxy binary (looked on PATH and at {_DEBIAN_BINARY})")
    return Path(found)


def haproxy_config(port: int, backends: Sequence[str], *, health: str = "/v2/health/ready",
                   check_ms: int = 300, retries: int = 3) -> str:
    """The configuration: one HTTP frontend on 127.0.0.1:``port``, one backend server per ``host:port``."""
    servers = "\n".join(f"    server r{i} {b} check" for i, b in enumerate(backends))
    return f"""global
    maxconn 4096

defaults
    mode http
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    timeout http-request 10s
    timeout check 2s
    retries {retries}
    option redispatch 1
    option http-buffer-request
    retry-on conn-failure empty-response junk-response response-timeout 503

frontend shipyard
    bind 127.0.0.1:{port}
    default_backend replicas

backend replicas
    balance roundrobin
    option httpchk GET {health}
    http-check expect status 200
    default-server inter {check_ms}ms fall 2 rise 1
{servers}
"""


@contextmanager
def load_balancer(folder: Path, backends: Sequence[str], *, timeout: float = 20.0) -> Iterator[str]:
    """Run HAProxy in the foreground on 127.0.0.1 in front of ``backends`` for the duration of the block.

    Args:
        folder: a folder for the configuration and the log.
        backends: ``host:port`` of each replica.
        timeout: seconds allowed for start-up.

    Yields:
        The balancer's URL, ``http://127.0.0.1:PORT``.

    Raises:
        HaproxyUnavailable: HAProxy is not installed; the message says how to get it.
        RuntimeError: it did not start; the message holds the end of its log.
    """
    binary = find_haproxy()
    work = Path(folder)
    work.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config, log_path = work / "haproxy.cfg", work / "haproxy.log"
    config.write_text(haproxy_config(port, backends))
    with open(log_path, "ab") as log:
        process = subprocess.Popen([str(binary), "-f", str(config), "-db"], cwd=work, stdin=subprocess.DEVNULL,
                                   stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout
        while not _listening(port):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"haproxy did not start on 127.0.0.1:{port} (exit code {process.poll()}); "
                                   f"last lines of {log_path}:\n{log_tail(log_path)}")
            time.sleep(0.05)
        logger.info("HAProxy up on 127.0.0.1:%d in front of %s", port, ", ".join(backends))
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process(process, "haproxy")


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False
