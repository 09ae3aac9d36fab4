"""``shipyard serve --workers N`` (N > 1): N whole server processes on shared sockets, supervised.

The supervisor (the ``shipyard serve`` process) reserves the HTTP and gRPC ports (bound
with SO_REUSEPORT, never listening: a port in use fails here, port 0 becomes a real one),
then starts N worker processes. Each worker is a complete server, as ``--workers 1`` runs
it: uvicorn and the gRPC listener on sockets of its own bound to those ports with
SO_REUSEPORT, its own data plane, models and services. The kernel spreads new connections
evenly over the workers' listening sockets (a connection stays with its worker). One
socket accepted by all workers would not: the worker that wakes first accepts a burst of
connections, and under load (wrk's 32 at once) one worker got 22 of them, the other 6.

* **Start**: the first worker loads alone (a compiled ONNX graph it caches is reused by
  the others), then the rest; the server is ready when every worker is (logged). A worker
  that exits before it was ready stops the start (exit code 1, its error in the log).
* **A worker dies** (a crash, the OOM killer, SIGKILL): the requests it had accepted are
  lost with its connections (clients see a reset, as with gunicorn or uvicorn workers);
  the others keep serving and a replacement starts after a short backoff (doubling up
  to 10 s while replacements keep dying young), logged.
* **SIGTERM or SIGINT**: forwarded as SIGTERM; every worker drains (stops accepting,
  finishes in-flight requests, stops its services in order) and the supervisor exits 0
  once all have exited, killing any still running after twice ``graceful_shutdown_seconds``
  plus 5 s. A second SIGINT is forwarded as is (uvicorn then stops waiting).
* **A worker never outlives the supervisor**: it asks the kernel for SIGTERM when its
  parent dies (PR_SET_PDEATHSIG on Linux; elsewhere it polls its parent).
* **Metrics**: the workers share a throwaway folder for prometheus_client's multiprocess
  mode (``PROMETHEUS_MULTIPROC_DIR``), created here and removed at exit; a dead worker's
  live gauges are dropped (``mark_process_dead``).

Workers start from a fresh interpreter (multiprocessing's spawn), so nothing of the
supervisor's state (threads, database connections, imported metric classes) leaks into them.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any

from shipyard.config import Settings
from shipyard.errors import ConfigError, ShipyardError

logger = logging.getLogger(__name__)

__all__ = ["Supervisor"]

FIRST_BACKOFF_SECONDS = 0.5
"""Wait before replacing a dead worker; doubles while replacements die young."""
LONGEST_BACKOFF_SECONDS = 10.0
YOUNG_SECONDS = 10.0
"""A worker that dies sooner than this after it started counts as dying young."""


@dataclass(frozen=True)
class _Spec:
    """What a worker process is started with (pickled to it)."""

    settings: Settings
    models: list[str] | None
    index: int
    port: int
    access_log: bool
    grpc_port: int | None
    metrics_dir: str
    parent_pid: int
    configure_logging: Callable[[], None] | None


@dataclass
class _Worker:
    index: int
    process: Any  # multiprocessing's SpawnProcess
    ready_pipe: Connection
    started: float
    ready: bool = False
    backoff: float = FIRST_BACKOFF_SECONDS


@dataclass
class _Signals:
    """Signals received, in order; the wakeup pipe makes ``wait`` return when one arrives."""

    received: list[int] = field(default_factory=list)
    wakeup: int = -1
    wakeup_read: int = -1


class Supervisor:
    """Runs ``settings.worker_count`` server processes on shared sockets until SIGTERM/SIGINT.

    Args:
        settings: the server's settings (host, port, TLS, drain time, ...).
        models: the references to serve (every worker serves all of them).
        access_log: whether workers log each request.
        grpc_port: also serve gRPC on this port (0: a free one, chosen here).
        configure_logging: called first in each worker (picklable), so workers log as the caller set up.
        on_ready: called once every worker is ready.
    """

    def __init__(self, settings: Settings, models: list[str] | None, *, access_log: bool = False,
                 grpc_port: int | None = None, configure_logging: Callable[[], None] | None = None,
                 on_ready: Callable[[], Any] | None = None) -> None:
        self.settings = settings
        self.models = models
        self.count = settings.worker_count
        self.access_log = access_log
        self.grpc_port = grpc_port
        self.configure_logging = configure_logging
        self.on_ready = on_ready
        self.restarts = 0
        self._ctx = multiprocessing.get_context("spawn")
        self._workers: dict[int, _Worker] = {}
        self._signals = _Signals()
        self._sock: socket.socket | None = None
        self._metrics_dir = ""

    # -- the whole run -----------------------------------------------------------------------

    def run(self) -> None:
        """Reserve the ports, start the workers, supervise them until a signal, drain them. Blocks."""
        settings = self.settings
        self._sock = _reserve(settings.host, settings.port, "HTTP")
        grpc_hold: socket.socket | None = None
        previous = self._catch_signals()
        try:
            if self.grpc_port is not None:
                grpc_hold = _reserve(settings.host, self.grpc_port, "gRPC")
                self.grpc_port = grpc_hold.getsockname()[1]
            self._metrics_dir = tempfile.mkdtemp(prefix="shipyard-metrics-")
            # read by prometheus_client when a worker imports it: every worker writes its values there
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = self._metrics_dir
            self._log_listening()
            if self._start():
                self._supervise()
        finally:
            self._stop_all()
            self._restore_signals(previous)
            self._sock.close()
            if grpc_hold is not None:
                grpc_hold.close()
            os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
            if self._metrics_dir:
                shutil.rmtree(self._metrics_dir, ignore_errors=True)

    def _log_listening(self) -> None:
        from shipyard.security.tls import ServerTls

        tls = ServerTls.from_config(self.settings.security.tls)
        host, port = self._sock.getsockname()[:2]  # type: ignore[union-attr]
        shown = f"[{host}]" if ":" in host else host
        logger.info("listening on %s://%s:%d with %d worker processes%s", "https" if tls is not None else "http",
                    shown, port, self.count,
                    f" (client certificates: {tls.client_auth})" if tls is not None else "")
        if self.grpc_port is not None:
            logger.info("gRPC port %d shared by the workers", self.grpc_port)

    def _start(self) -> bool:
        """Start every worker (the first alone); False when a signal came first. Raises if one fails."""
        if not self._until_ready([self._spawn(0)]):
            return False
        if not self._until_ready([self._spawn(i) for i in range(1, self.count)]):
            return False
        logger.info("%d workers ready (pids %s)", self.count,
                    ", ".join(str(w.process.pid) for w in sorted(self._workers.values(), key=lambda w: w.index)))
        if self.on_ready is not None:
            self.on_ready()
        return True

    def _until_ready(self, starting: list[_Worker]) -> bool:
        waiting = {w.index for w in starting}
        while waiting:
            events = self._wait(None)
            if self._signals.received:
                return False
            for w in list(self._workers.values()):
                if w.ready_pipe in events:
                    self._take_ready(w)
                if w.process.sentinel in events and not w.ready:
                    w.process.join()
                    self._forget(w)
                    raise ShipyardError(f"worker {w.index} (pid {w.process.pid}) exited with "
                                        f"{_exit_reason(w.process.exitcode)} before it was ready (its log is above)")
            waiting = {i for i in waiting if i in self._workers and not self._workers[i].ready}
        return True

    def _supervise(self) -> None:
        """Replace dead workers until a signal arrives."""
        due: dict[int, tuple[float, float]] = {}  # index -> (when to respawn, its backoff)
        while not self._signals.received:
            now = time.monotonic()
            timeout = max(0.0, min(t for t, _ in due.values()) - now) if due else None
            events = self._wait(timeout)
            if self._signals.received:
                return
            for w in list(self._workers.values()):
                if w.ready_pipe in events and not w.ready:
                    self._take_ready(w)
                    if w.ready:
                        logger.info("worker %d replaced (pid %d)", w.index, w.process.pid)
                if w.process.sentinel in events:
                    w.process.join()
                    self._forget(w)
                    young = time.monotonic() - w.started < YOUNG_SECONDS
                    backoff = min(w.backoff * 2, LONGEST_BACKOFF_SECONDS) if young else FIRST_BACKOFF_SECONDS
                    logger.error("worker %d (pid %d) died (%s); its in-flight requests are lost; "
                                 "replacing it in %.1fs", w.index, w.process.pid,
                                 _exit_reason(w.process.exitcode), backoff)
                    due[w.index] = (time.monotonic() + backoff, backoff)
            now = time.monotonic()
            for index, (when, backoff) in list(due.items()):
                if when <= now:
                    del due[index]
                    self.restarts += 1
                    self._spawn(index, backoff)

    def _stop_all(self) -> None:
        """SIGTERM every worker, wait for them to drain, SIGKILL what is left."""
        alive = [w for w in self._workers.values() if w.process.is_alive()]
        for w in alive:
            _signal(w, signal.SIGTERM)
        grace = 2 * self.settings.graceful_shutdown_seconds + 5.0
        deadline = time.monotonic() + grace
        seen = len(self._signals.received)
        while any(w.process.is_alive() for w in alive) and time.monotonic() < deadline:
            self._wait(min(1.0, max(0.0, deadline - time.monotonic())), only_exits=True)
            for sig in self._signals.received[seen:]:  # an impatient second Ctrl-C reaches the workers
                for w in alive:
                    _signal(w, sig)
            seen = len(self._signals.received)
        for w in alive:
            if w.process.is_alive():
                logger.error("worker %d (pid %d) still running %.0fs after SIGTERM; killing it",
                             w.index, w.process.pid, grace)
                w.process.kill()
        for w in list(self._workers.values()):
            w.process.join()
            self._forget(w)
        if alive:
            logger.info("all workers stopped")

    # -- processes ---------------------------------------------------------------------------

    def _spawn(self, index: int, backoff: float = FIRST_BACKOFF_SECONDS) -> _Worker:
        reader, writer = self._ctx.Pipe(duplex=False)
        assert self._sock is not None
        spec = _Spec(self.settings, self.models, index, self._sock.getsockname()[1], self.access_log, self.grpc_port,
                     self._metrics_dir, os.getpid(), self.configure_logging)
        process = self._ctx.Process(target=_worker_main, args=(spec, writer),
                                    name=f"shipyard-worker-{index}")
        process.start()
        writer.close()
        worker = _Worker(index, process, reader, time.monotonic(), backoff=backoff)
        self._workers[index] = worker
        return worker

    def _take_ready(self, worker: _Worker) -> None:
        try:
            worker.ready_pipe.recv()
        except (EOFError, OSError):
            return  # it died; its sentinel says so
        worker.ready = True

    def _forget(self, worker: _Worker) -> None:
        """Drop an exited worker: its pipe, and its live gauges in the metrics folder."""
        self._workers.pop(worker.index, None)
        worker.ready_pipe.close()
        if self._metrics_dir and worker.process.pid is not None:
            from prometheus_client.multiprocess import mark_process_dead

            mark_process_dead(worker.process.pid, self._metrics_dir)  # type: ignore[no-untyped-call]

    def _wait(self, timeout: float | None, *, only_exits: bool = False) -> list[Any]:
        watched: list[Any] = [self._signals.wakeup_read]
        for w in self._workers.values():
            watched.append(w.process.sentinel)
            if not w.ready and not only_exits:
                watched.append(w.ready_pipe)
        events = wait(watched, timeout)
        if self._signals.wakeup_read in events:
            with contextlib.suppress(BlockingIOError):
                os.read(self._signals.wakeup_read, 512)
        return events

    # -- signals -----------------------------------------------------------------------------

    def _catch_signals(self) -> dict[int, Any]:
        read_end, write_end = os.pipe()
        os.set_blocking(read_end, False)
        os.set_blocking(write_end, False)
        self._signals.wakeup = write_end
        self._signals.wakeup_read = read_end

        def received(signum: int, frame: object) -> None:
            if not self._signals.received:
                logger.info("%s: stopping the workers (they finish their in-flight requests)",
                            signal.Signals(signum).name)
            self._signals.received.append(signum)

        previous: dict[int, Any] = {sig: signal.signal(sig, received) for sig in (signal.SIGINT, signal.SIGTERM)}
        previous[-1] = signal.set_wakeup_fd(write_end)
        return previous

    def _restore_signals(self, previous: dict[int, Any]) -> None:
        signal.set_wakeup_fd(previous.pop(-1))
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        os.close(self._signals.wakeup)
        os.close(self._signals.wakeup_read)


def _signal(worker: _Worker, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(worker.process.pid, sig)


def _exit_reason(code: int | None) -> str:
    if code is None:
        return "an unknown status"
    if code < 0:
        return f"signal {signal.Signals(-code).name}"
    return f"exit code {code}"


# -- sockets ---------------------------------------------------------------------------------


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _reserve(host: str, port: int, what: str) -> socket.socket:
    """Hold ``port`` (a free one for 0) with SO_REUSEPORT, so the workers can all bind it and no one else.

    The socket is bound, never listening: the kernel only hands connections to the workers'
    listening sockets. A server already on the port without SO_REUSEPORT makes this fail.
    """
    if not hasattr(socket, "SO_REUSEPORT"):
        raise ConfigError("--workers above 1 needs SO_REUSEPORT, which this platform lacks")
    sock = socket.socket(_family(host), socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        where = "listen for gRPC" if what == "gRPC" else "listen"
        raise ConfigError(f"cannot {where} on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def _bound(host: str, port: int) -> socket.socket:
    """This worker's socket on the port the supervisor holds: bound, listening once uvicorn serves on it
    (after the models loaded, so that no connection waits in the queue of a worker still loading)."""
    sock = socket.socket(_family(host), socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


# -- inside a worker process -------------------------------------------------------------------


def _worker_main(spec: _Spec, ready: Connection) -> None:
    """One worker: a whole server on the shared ports; tells the supervisor when it is ready."""
    _die_with(spec.parent_pid)
    # Ctrl-C in a terminal signals the whole foreground group; the supervisor forwards one SIGTERM
    # instead, so that a worker sees one signal (a second SIGINT would make uvicorn stop waiting).
    with contextlib.suppress(OSError):
        os.setpgid(0, 0)
    if spec.configure_logging is not None:
        spec.configure_logging()
    from shipyard.serving.server import WorkerContext, build_server, run_uvicorn

    def on_ready() -> None:
        ready.send(os.getpid())

    try:
        server = build_server(spec.settings, spec.models, on_ready=on_ready, grpc_port=spec.grpc_port,
                              worker=WorkerContext(spec.index, spec.metrics_dir))
    except ShipyardError as exc:
        logger.error("worker %d could not start: %s", spec.index, exc)
        sys.exit(1)
    code: Any = 0
    try:
        run_uvicorn(server, access_log=spec.access_log, sockets=[_bound(spec.settings.host, spec.port)])
    except SystemExit as exc:  # the clean exit after a signal
        code = exc.code
    # Everything is stopped and flushed (the services' stop hooks ran); skip the interpreter's
    # teardown of the loaded libraries, which takes seconds of a drain for nothing.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code if isinstance(code, int) else 1)


def _die_with(parent: int) -> None:
    """SIGTERM this process when ``parent`` dies (it then drains as on any SIGTERM)."""
    if sys.platform.startswith("linux"):
        pr_set_pdeathsig = 1
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)
    else:
        def watch() -> None:
            while os.getppid() == parent:
                time.sleep(1.0)
            os.kill(os.getpid(), signal.SIGTERM)

        threading.Thread(target=watch, name="parent watch", daemon=True).start()
    if os.getppid() != parent:  # it died before the request took effect
        sys.exit(0)
