"""A graph step on a worker pool of its own: child ``shipyard serve`` processes of this server, over gRPC.

``Node("model", "lr:1", placement={"workers": 2})`` (``placement: {workers: 2}`` in YAML)
runs that step, on a server, in 2 child processes that serve only its pinned version:
each is an ordinary ``shipyard serve lr:1`` on 127.0.0.1 with a port of its own, reached
with shipyard's gRPC client as a step placed on another server is (``remote.py``). So
a heavy model gets cores of its own, beside the light steps that stay in the server's
process. Elsewhere (``shipyard.load``, batch jobs, streams) the step runs in-process.

* **Start**: when a graph version with pooled steps loads on a server, its pools start
  (one per step version and size, shared by the graphs that pin the same one) and the
  load waits until every child answers ``/v2/health/ready``: readiness waits for them.
* **Routing**: each call goes to the next ready child in turn. With no child ready (all
  restarting) the step is unavailable: 503 naming the step
  (``step 'model' (lr:1 at workers:2) is unavailable: ...``).
* **Supervision**: one thread per pool starts the children and watches them; a child
  that exits (killed, crashed) is started again after a pause (doubling to 10 s while
  restarts keep failing), logged. A child never outlives the thread that started it
  (Linux: PR_SET_PDEATHSIG), so not the server either.
* **Stop**: when the last graph version using a pool is released, and when the server
  stops, its children get SIGTERM (drain), SIGKILL after ``STOP_SECONDS``.

The children read the server's registry (``home``, ``registry_url``, ``artifacts``) with
a settings file of their own: no monitoring (the server observes each step call); they
listen on 127.0.0.1 only.

* **Authentication**, always on, whatever the server's own: each pool has a random key that
  only its server holds. The children's settings file keeps its sha256
  (``security.auth.pool_key_sha256``, with API keys from the database and JWTs off), so a
  child answers nothing but ``predict`` calls carrying that key (gRPC ``authorization``
  metadata); any other local user gets UNAUTHENTICATED, and cannot go around the server's
  credentials, scopes and rates. The file is written with mode 0600 in a 0700 folder.
* **Folders**: the settings folder of a pool is ``HOME/run/pools/HOST-PID-RANDOM``, removed
  when the pool stops; a server that was killed (SIGKILL) leaves its folders behind, and the
  next server on the same home and host removes those whose process is gone, when it starts
  its first pool.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from shipyard.errors import ModelNotReady
from shipyard.graphs.remote import RemoteStep
from shipyard.registry.model import ModelVersion
from shipyard.runtime.base import Arrays

if TYPE_CHECKING:
    from shipyard.config import Settings
    from shipyard.registry.loaded import LoadedModel

logger = logging.getLogger(__name__)

__all__ = ["StepPools"]

START_SECONDS = 120.0
"""How long a graph's load waits for its pools' children to be ready."""
STOP_SECONDS = 10.0
"""How long a stopping child may drain before it is killed."""
FIRST_BACKOFF_SECONDS = 0.5
MAX_BACKOFF_SECONDS = 10.0
_WATCH_SECONDS = 0.2


@dataclass
class _Child:
    index: int
    process: subprocess.Popen[bytes] | None = None
    http_port: int = 0
    grpc_port: int = 0
    remote: RemoteStep | None = None
    started_at: float = 0.0
    backoff: float = FIRST_BACKOFF_SECONDS
    next_start: float = 0.0


@dataclass(eq=False)
class _Pool:
    """The supervised children serving one version."""

    version: ModelVersion
    workers: int
    settings: Settings
    users: set[str] = field(default_factory=set)
    children: list[_Child] = field(default_factory=list)
    _ready: list[_Child] = field(default_factory=list)
    _turn: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _folder: str = ""
    _key: str = field(default_factory=lambda: f"sy_pool_{secrets.token_urlsafe(32)}", repr=False)
    """The pool's key: only this process holds it; the children's settings file keeps its sha256."""

    @property
    def label(self) -> str:
        return f"{self.version.ref} on {self.workers} worker{'s' if self.workers != 1 else ''}"

    def start(self) -> None:
        self._folder = _new_folder(self.settings)
        self._write_settings()
        self.children = [_Child(i) for i in range(self.workers)]
        self._thread = threading.Thread(target=self._supervise, name=f"pool {self.version.ref}", daemon=True)
        self._thread.start()

    def wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self._stop.is_set():
            if len(self._ready) == self.workers:
                return True
            time.sleep(0.05)
        return len(self._ready) == self.workers

    def pick(self) -> RemoteStep:
        ready = self._ready
        if not ready:
            raise ModelNotReady(f"no worker of its pool is up ({self.label}; restarting)")
        self._turn = (self._turn + 1) % len(ready)
        remote = ready[self._turn % len(ready)].remote
        assert remote is not None
        return remote

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(STOP_SECONDS + 5.0)

    # -- the supervising thread ------------------------------------------------------------

    def _supervise(self) -> None:
        try:
            while not self._stop.is_set():
                for child in self.children:
                    try:
                        self._look_after(child)
                    except Exception:  # the supervisor never dies: the next look tries again
                        logger.exception("pool %s: worker %d", self.label, child.index)
                self._stop.wait(_WATCH_SECONDS)
        finally:
            self._ready = []
            for child in self.children:
                _terminate(child)
            for child in self.children:
                _reap(child)
            shutil.rmtree(self._folder, ignore_errors=True)

    def _look_after(self, child: _Child) -> None:
        process = child.process
        if process is not None and process.poll() is not None:
            lived = time.monotonic() - child.started_at
            child.backoff = FIRST_BACKOFF_SECONDS if lived > 30.0 else min(child.backoff * 2, MAX_BACKOFF_SECONDS)
            logger.warning("pool %s: worker %d (pid %d) exited with %s; starting it again in %.1fs", self.label,
                           child.index, process.pid, process.returncode, child.backoff)
            self._drop(child)
            child.process = None
            child.next_start = time.monotonic() + child.backoff
            return
        if process is None:
            if time.monotonic() >= child.next_start:
                self._spawn(child)
            return
        if child.remote is None and _ready(child.http_port):
            child.remote = RemoteStep(f"grpc://127.0.0.1:{child.grpc_port}", self.version, token=self._key)
            self._ready = [*self._ready, child]
            logger.info("pool %s: worker %d (pid %d) ready on 127.0.0.1:%d (gRPC)", self.label, child.index,
                        process.pid, child.grpc_port)

    def _write_settings(self) -> None:
        """The children's settings file (0600, in the pool's 0700 folder); again if something removed it."""
        config = os.path.join(self._folder, "shipyard.yaml")
        if os.path.exists(config):
            return
        os.makedirs(self._folder, mode=0o700, exist_ok=True)
        key_sha256 = hashlib.sha256(self._key.encode()).hexdigest()
        with os.fdopen(os.open(config, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
            json.dump(_child_settings(self.settings, key_sha256), f)  # JSON is YAML

    def _spawn(self, child: _Child) -> None:
        self._write_settings()
        child.http_port, child.grpc_port = _free_port(), _free_port()
        command = [sys.executable, "-m", "shipyard", "serve", self.version.ref,
                   "-c", os.path.join(self._folder, "shipyard.yaml"), "--host", "127.0.0.1",
                   "--port", str(child.http_port), "--grpc-port", str(child.grpc_port), "--workers", "1",
                   "--log-level", "warning"]
        env = {k: v for k, v in os.environ.items() if not k.startswith("SHIPYARD_")}  # only the file's settings
        # the server's working folder: a relative home, artifacts folder or SQLite path means the same there
        child.process = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL,
                                         preexec_fn=_die_with_parent)  # noqa: PLW1509 - prctl only, no locks
        child.started_at = time.monotonic()
        logger.info("pool %s: worker %d started (pid %d)", self.label, child.index, child.process.pid)

    def _drop(self, child: _Child) -> None:
        self._ready = [c for c in self._ready if c is not child]
        remote, child.remote = child.remote, None
        if remote is not None:
            remote.close()


class PoolHandle:
    """What a loaded graph's plan calls for a pooled step: ``infer`` on the pool's next ready child."""

    def __init__(self, pools: StepPools, pool: _Pool, user: str) -> None:
        self._pools = pools
        self._pool = pool
        self._user = user
        self.url = f"workers:{pool.workers}"

    async def infer(self, arrays: Arrays) -> Arrays:
        return await self._pool.pick().infer(arrays)

    def infer_sync(self, arrays: Arrays) -> Arrays:
        return self._pool.pick().infer_sync(arrays)

    def close(self) -> None:
        """This graph version no longer uses the pool (its last user stops it)."""
        self._pools.release(self._pool, self._user)


class StepPools:
    """The worker pools of the graph steps a server runs (a server service: ``stop`` ends every child).

    Args:
        settings: the server's settings (the children read the same registry).
        start_seconds: how long a graph's load waits for its pools to be ready.
    """

    name = "graph step pools"

    def __init__(self, settings: Settings, *, start_seconds: float = START_SECONDS) -> None:
        self.settings = settings
        self.start_seconds = start_seconds
        self._pools: dict[tuple[str, str, int], _Pool] = {}
        self._stopping: set[_Pool] = set()
        self._lock = threading.Lock()
        self._closed = False

    def acquire(self, version: ModelVersion, workers: int, user: str) -> PoolHandle:
        """A handle on the pool of ``workers`` children serving ``version`` (started when new) for ``user``."""
        key = (version.ref, version.digest, workers)
        with self._lock:
            if self._closed:
                raise ModelNotReady(f"the server is stopping; no pool for {version.ref}")
            pool = self._pools.get(key)
            if pool is None:
                pool = self._pools[key] = _Pool(version, workers, self.settings)
                pool.start()
            pool.users.add(user)
        if not pool.wait_ready(self.start_seconds):
            logger.error("pool %s: not every worker was ready after %.0fs; its step answers 503 until one is",
                         pool.label, self.start_seconds)
        return PoolHandle(self, pool, user)

    def release(self, pool: _Pool, user: str) -> None:
        with self._lock:
            pool.users.discard(user)
            if pool.users or self._pools.get((pool.version.ref, pool.version.digest, pool.workers)) is not pool:
                return
            del self._pools[(pool.version.ref, pool.version.digest, pool.workers)]
            self._stopping = {p for p in self._stopping if p._thread is not None and p._thread.is_alive()}
            self._stopping.add(pool)
        logger.info("pool %s: no graph uses it any more; stopping it", pool.label)
        pool._stop.set()  # its supervisor ends the children (close() waits for them)

    def attach(self, model: LoadedModel) -> None:
        """Start the pools of a loaded graph version's pooled steps and route those steps to them."""
        plan = getattr(model.runtime, "plan", None)
        pooled = getattr(plan, "pooled", None)
        if not pooled:
            return
        user = model.version.ref
        assert plan is not None
        plan.attach({step: self.acquire(plan.models[step].version, workers, user) for step, workers in pooled.items()})

    def pools(self) -> list[dict[str, Any]]:
        """Each pool: its version, size, users, its children's pids and gRPC ports, and its settings folder
        (for logs and tests; the key is not shown)."""
        with self._lock:
            pools = list(self._pools.values())
        return [{"version": p.version.ref, "workers": p.workers, "users": sorted(p.users),
                 "pids": [c.process.pid if c.process is not None else None for c in p.children],
                 "grpc_ports": [c.grpc_port for c in p.children], "folder": p._folder,
                 "ready": len(p._ready)} for p in pools]

    async def start(self) -> None:
        """Nothing: pools start with the graph versions that use them."""

    async def stop(self) -> None:
        import anyio.to_thread

        await anyio.to_thread.run_sync(self.close)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            pools, self._pools = [*self._pools.values(), *self._stopping], {}
            self._stopping = set()
        for pool in pools:
            pool._stop.set()
        for pool in pools:
            pool.stop()


def _child_settings(settings: Settings, key_sha256: str) -> dict[str, Any]:
    """The settings file of a pool's child: the server's registry and limits, nothing observed, no broker,
    and only the pool's key accepted."""
    return {
        "security": {"auth": {"enabled": True, "api_keys": False, "pool_key_sha256": key_sha256},
                     "model_url_hosts": list(settings.security.model_url_hosts)},
        "home": str(settings.home), "registry_url": settings.registry_url, "artifacts": settings.artifacts,
        "runtime": settings.runtime, "max_body_bytes": settings.max_body_bytes, "max_queue": settings.max_queue,
        "request_timeout_seconds": settings.request_timeout_seconds, "async_broker": "",
        "alias_refresh_seconds": settings.alias_refresh_seconds, "log_format": settings.log_format,
        "monitoring": {"drift": {"enabled": False}, "prediction_log": {"enabled": False},
                       "metrics": {"enabled": False}},
    }


def _new_folder(settings: Settings) -> str:
    """A private (0700) folder for a new pool's settings, under the server's home; stale ones go first.

    Named ``HOST-PID-RANDOM``: folders of this host whose server process is gone (killed) are removed.
    A home that cannot be written falls back to the system's temporary folder (cleaned by the system).
    """
    root = os.path.join(os.fspath(settings.home), "run", "pools")
    host = socket.gethostname().replace(os.sep, "_")
    try:
        os.makedirs(root, mode=0o700, exist_ok=True)
        _remove_stale(root, host)
        return tempfile.mkdtemp(prefix=f"{host}-{os.getpid()}-", dir=root)
    except OSError as exc:
        logger.warning("cannot keep pool settings under %s (%s); using the temporary folder", root, exc)
        return tempfile.mkdtemp(prefix="shipyard-pool-")


def _remove_stale(root: str, host: str) -> None:
    for entry in os.listdir(root):
        owner, _, rest = entry.rpartition("-")  # HOST-PID-RANDOM -> (HOST-PID, RANDOM)
        name, _, pid = owner.rpartition("-")
        if name != host or not pid.isdigit() or not rest or _alive(int(pid)):
            continue
        logger.info("removing the settings folder of a pool whose server (pid %s) is gone: %s", pid, entry)
        shutil.rmtree(os.path.join(root, entry), ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ready(port: int) -> bool:
    import httpx  # here: the server imports this module whether or not a graph has a pool

    try:
        return httpx.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


_PR_SET_PDEATHSIG = 1
_LIBC: Any = None
if sys.platform.startswith("linux"):
    with contextlib.suppress(OSError):
        _LIBC = ctypes.CDLL(None, use_errno=True)


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the thread that started it ends (the pool's supervisor)."""
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def _terminate(child: _Child) -> None:
    if child.process is not None and child.process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            child.process.send_signal(signal.SIGTERM)


def _reap(child: _Child) -> None:
    process = child.process
    if process is None:
        return
    try:
        process.wait(STOP_SECONDS)
    except subprocess.TimeoutExpired:
        logger.warning("worker %d (pid %d) did not stop in %.0fs; killing it", child.index, process.pid, STOP_SECONDS)
        process.kill()
        process.wait()
    remote, child.remote = child.remote, None
    if remote is not None:
        remote.close()
