"""Model worker processes: the executor behind ``shipyard serve --workers N`` (N > 1).

The server process keeps HTTP, validation, batching and admission; each worker
process loads every served version once and runs model calls, one at a time.
``load`` adds a version on every worker (an alias move preloads its new target
this way before traffic reaches it) and ``unload`` drops one; a replacement
worker loads the versions loaded at the time it starts.
A call goes to an idle worker over a pipe (NumPy arrays pickled with protocol 5)
and its answer comes back on the same pipe, read by the event loop.

When a worker dies (a crash in native code, the OOM killer, a SIGKILL), its pipe
closes: the call it was running fails at once with ``WorkerDied`` (503, never a
hang) and a replacement starts, loads the models and joins the idle set.

Workers start from a forkserver that has already imported the served models'
libraries, so starting or replacing one costs a fork and a model load, not a
fresh interpreter importing scikit-learn.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import multiprocessing
import os
import signal
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from shipyard.config import Settings
from shipyard.errors import InferenceError, InvalidOption, ModelNotReady, ShipyardError, WorkerDied
from shipyard.registry import LoadedModel, ModelVersion
from shipyard.runtime.base import Arrays
from shipyard.runtime.loader import preload_modules as runtime_preload

logger = logging.getLogger(__name__)

def preload_modules(flavors: set[str], runtime_mode: str) -> list[str]:
    mods = ["shipyard.hosting.workers", "shipyard.registry", "numpy"]
    for flavor in sorted(flavors):
        mods += runtime_preload(flavor)
    if runtime_mode != "native":
        mods += runtime_preload("onnx")
    return list(dict.fromkeys(mods))


class RemoteRuntime:
    """Stands in the server process for a model that only the workers load."""

    def predict(self, inputs: Arrays) -> Arrays:  # pragma: no cover - the pool never calls it
        raise RuntimeError("this model runs in worker processes")

    def unload(self) -> None:
        pass


def remote_model(mv: ModelVersion) -> LoadedModel:
    return LoadedModel(mv, RemoteRuntime())  # type: ignore[arg-type]


@dataclass
class _Worker:
    index: int
    process: Any
    conn: Connection
    ready: asyncio.Future[int]
    pending: dict[int, asyncio.Future[Any]] = field(default_factory=dict)
    alive: bool = True


class WorkerPool:
    """An executor that runs model calls in ``size`` worker processes."""

    def __init__(self, settings: Settings, size: int) -> None:
        if size < 1:
            raise InvalidOption(f"a worker pool needs at least one worker, got {size}", option="workers",
                                expected=">= 1", got=size)
        self.settings = settings
        self.capacity = size
        self._ctx = multiprocessing.get_context("forkserver")
        self._workers: dict[int, _Worker] = {}
        self._idle: asyncio.Queue[_Worker] = asyncio.Queue()
        self._ids = itertools.count(1)
        self._versions: list[tuple[str, int]] = []
        self._closing = False
        self.restarts = 0
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- lifecycle -------------------------------------------------------------------

    def preload(self, modules: list[str]) -> None:
        """Modules the forkserver imports once before forking workers (call before ``start``)."""
        self._ctx.set_forkserver_preload(modules)

    async def start(self, versions: list[ModelVersion]) -> None:
        """Start every worker and load ``versions`` in each; returns when all are ready.

        The first worker loads alone, so a compiled graph it caches is reused by the rest.
        """
        self._versions = [(mv.name, mv.version) for mv in versions]
        first = self._spawn(0)
        await self._until_ready(first)
        rest = [self._spawn(i) for i in range(1, self.capacity)]
        for w in rest:
            await self._until_ready(w)
        logger.info("%d model workers ready (pids %s)", self.capacity,
                    ", ".join(str(w.process.pid) for w in self._workers.values()))

    async def close(self) -> None:
        self._closing = True
        for t in list(self._tasks):
            t.cancel()
        for w in list(self._workers.values()):
            self._detach(w)
            with contextlib.suppress(OSError):
                w.conn.send(("stop",))
        for w in list(self._workers.values()):
            await asyncio.get_running_loop().run_in_executor(None, w.process.join, 5)
            if w.process.is_alive():
                w.process.kill()
        self._workers.clear()

    async def load(self, mv: ModelVersion) -> None:
        """Load ``mv`` in every live worker; returns when all have it (replacements load it too)."""
        key = (mv.name, mv.version)
        if key not in self._versions:
            self._versions.append(key)
        calls = [self._call(w, ("load", mv.name, mv.version)) for w in list(self._workers.values()) if w.alive]
        results = await asyncio.gather(*calls, return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException) and not isinstance(r, WorkerDied)]
        if failed:
            raise failed[0]

    async def unload(self, name: str, version: int) -> None:
        """Drop ``name:version`` from every live worker."""
        with contextlib.suppress(ValueError):
            self._versions.remove((name, version))
        calls = [self._call(w, ("unload", name, version)) for w in list(self._workers.values()) if w.alive]
        await asyncio.gather(*calls, return_exceptions=True)

    def status(self) -> list[dict[str, Any]]:
        return [{"index": w.index, "pid": w.process.pid, "alive": w.alive} for w in self._workers.values()]

    # -- calls ------------------------------------------------------------------------

    async def run(self, model: LoadedModel, arrays: Arrays) -> Arrays:
        worker = await self._idle.get()
        try:
            result: Arrays = await self._call(worker, ("predict", model.name, model.version.version, arrays))
            return result
        finally:
            if worker.alive:
                self._idle.put_nowait(worker)

    async def _call(self, worker: _Worker, message: tuple[Any, ...]) -> Any:
        call_id = next(self._ids)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        worker.pending[call_id] = fut
        try:
            worker.conn.send((message[0], call_id, *message[1:]))
        except OSError:
            worker.pending.pop(call_id, None)
            self._died(worker)
            raise WorkerDied(f"model worker {worker.index} (pid {worker.process.pid}) is gone; retry") from None
        return await fut

    # -- processes ----------------------------------------------------------------------

    def _spawn(self, index: int) -> _Worker:
        parent, child = self._ctx.Pipe()
        process = self._ctx.Process(
            target=worker_main, args=(child, self.settings, self._versions), name=f"shipyard-worker-{index}",
            daemon=True,
        )
        process.start()
        child.close()
        loop = asyncio.get_running_loop()
        worker = _Worker(index, process, parent, loop.create_future())
        self._workers[index] = worker
        loop.add_reader(parent.fileno(), self._readable, worker)
        return worker

    async def _until_ready(self, worker: _Worker) -> None:
        await worker.ready
        self._idle.put_nowait(worker)

    def _readable(self, worker: _Worker) -> None:
        try:
            message = worker.conn.recv()
        except (EOFError, OSError):
            self._died(worker)
            return
        kind = message[0]
        if kind == "ready":
            if not worker.ready.done():
                worker.ready.set_result(message[1])
            return
        if kind == "failed":  # the worker could not load its models
            if not worker.ready.done():
                worker.ready.set_exception(ModelNotReady(f"model worker {worker.index} failed to start: {message[1]}"))
            return
        fut = worker.pending.pop(message[1], None)
        if fut is None or fut.done():
            return
        if kind == "ok":
            fut.set_result(message[2])
        else:
            fut.set_exception(_rebuild(message[2], message[3]))

    def _detach(self, worker: _Worker) -> None:
        if worker.alive:
            worker.alive = False
            with contextlib.suppress(ValueError, OSError):
                asyncio.get_running_loop().remove_reader(worker.conn.fileno())

    def _died(self, worker: _Worker) -> None:
        if not worker.alive:
            return
        self._detach(worker)
        worker.conn.close()
        code = worker.process.exitcode if not worker.process.is_alive() else None
        reason = WorkerDied(
            f"model worker {worker.index} (pid {worker.process.pid}) died while running this request"
            + (f" (exit code {code})" if code is not None else "") + "; a replacement is starting, retry"
        )
        for fut in worker.pending.values():
            if not fut.done():
                fut.set_exception(reason)
        worker.pending.clear()
        if not worker.ready.done():
            worker.ready.set_exception(reason)
        if self._closing:
            return
        logger.error("model worker %d (pid %s) died (exit code %s); starting a replacement",
                     worker.index, worker.process.pid, code)
        self.restarts += 1
        task = asyncio.get_running_loop().create_task(self._replace(worker.index))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _replace(self, index: int) -> None:
        while not self._closing:
            try:
                await self._until_ready(self._spawn(index))
                logger.info("model worker %d replaced", index)
                return
            except (ShipyardError, OSError, EOFError) as exc:  # EOFError: the forkserver itself is gone
                logger.error("replacement of worker %d failed: %s; retrying in 1s", index, exc)
                await asyncio.sleep(1)


def _rebuild(kind: str, message: str) -> ShipyardError:
    if kind == "ModelNotReady":
        return ModelNotReady(message)
    return InferenceError(message)


# -- inside the worker process ------------------------------------------------------------


def worker_main(conn: Connection, settings: Settings, versions: list[tuple[str, int]]) -> None:
    """Load the served versions, then answer calls until told to stop or the pipe closes."""
    # The server process owns shutdown: it drains requests, then sends "stop" (SIGKILL after a grace).
    # Ctrl-C (SIGINT) and a SIGTERM sent to the whole process group (systemd's default KillMode,
    # `timeout`, `kill -- -PGID`) reach the workers too; ignoring both lets the server drain first.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    from shipyard.hosting.compiled import CompiledCache, load_for_serving
    from shipyard.registry import Registry

    registry = Registry.from_settings(settings)
    compiled = CompiledCache(settings.cache_dir / "compiled") if settings.runtimes_used != {"native"} else None
    models: dict[tuple[str, int], LoadedModel] = {}

    def model_for(name: str, version: int) -> LoadedModel:
        m = models.get((name, version))
        if m is None:
            m = load_for_serving(registry, registry.store.get_version(name, version), settings.runtime_for(name),
                                 compiled)
            models[(name, version)] = m
        return m

    try:
        for name, version in versions:
            model_for(name, version)
    except Exception as exc:
        conn.send(("failed", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ready", os.getpid()))
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError, KeyboardInterrupt):
            break
        if message[0] == "stop":
            break
        if message[0] == "unload":
            _, call_id, name, version = message
            dropped = models.pop((name, version), None)
            if dropped is not None:
                dropped.close()
            conn.send(("ok", call_id, None))
            continue
        try:
            if message[0] == "load":
                _, call_id, name, version = message
                model_for(name, version)
                conn.send(("ok", call_id, None))
                continue
            _, call_id, name, version, arrays = message
            conn.send(("ok", call_id, model_for(name, version).run(arrays)))
        except ShipyardError as exc:
            conn.send(("err", call_id, type(exc).__name__, str(exc)))
        except Exception as exc:  # noqa: BLE001 - everything a model raises goes back to its caller
            conn.send(("err", call_id, "InferenceError", f"{type(exc).__name__}: {exc}"))
    registry.close()
