"""Where a model call runs: in this process (on the event loop, or on the model's own lane thread).

Every executor has the same shape: ``await executor.run(model, arrays)`` with inputs
that already passed the signature, and ``capacity``, how many calls it can run at
once (the batcher keeps that many batches in flight).

A CPU-bound model gains nothing from concurrent calls in one process: they take turns
on the GIL, and each extra thread adds switching (a forest called from 32 threads at
once answers *slower* than from one). So each model gets one lane: a thread of its own
that runs its calls one at a time, with the callers waiting in a queue in front of it.
Native code that releases the GIL (tree traversal, ONNX Runtime, BLAS) runs on the lane
while the event loop goes on parsing and answering other requests; libraries with
threads of their own (ONNX Runtime's intra-op pool, XGBoost) parallelise inside a call.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from shipyard.registry import LoadedModel
from shipyard.runtime.base import Arrays

logger = logging.getLogger(__name__)


class Executor(Protocol):
    capacity: int

    async def run(self, model: LoadedModel, arrays: Arrays) -> Arrays:
        """Predict on validated inputs."""
        ...

    async def close(self) -> None:
        """Stop whatever the executor started."""
        ...

    def release(self, name: str, version: int) -> None:
        """Forget a version no longer served (what it holds for it, e.g. a lane thread)."""
        ...


class Lane:
    """One thread running one model's calls, one at a time, in the order they came.

    ``submit`` hands a call over and returns a future of the event loop; the thread
    sets it through ``call_soon_threadsafe``. The thread starts with the first call
    and ends at ``close`` (calls already queued finish first).
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._calls: queue.SimpleQueue[tuple[Callable[[], Any], asyncio.Future[Any]] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def submit(self, call: Callable[[], Any]) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"shipyard-lane {self.name}", daemon=True)
            self._thread.start()
        self._calls.put((call, future))
        return future

    def _run(self) -> None:
        while True:
            item = self._calls.get()
            if item is None:
                return
            call, future = item
            try:
                result = call()
            except BaseException as exc:  # delivered to the caller, never lost with the thread
                future.get_loop().call_soon_threadsafe(_settle, future, None, exc)
            else:
                future.get_loop().call_soon_threadsafe(_settle, future, result, None)

    def close(self) -> threading.Thread | None:
        """Stop the thread once the queued calls ran; the thread, to join (None: it never started)."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._calls.put(None)
        return thread


def _settle(future: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    if future.cancelled():  # the caller gave up (deadline); the call's result has nowhere to go
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)


class _Cost:
    """What a model's calls cost in CPU time of the thread running them: the median of the latest ones.

    CPU time, not wall time: a call waiting for the GIL or a core is not a more expensive
    call, and a measure that counted those waits would move a cheap model off the event loop
    just when the server is busiest (and keep it there, each hop adding waits of its own).
    A model that waits without working (a remote call, a device to sync with) costs little
    CPU but would stall the loop: one seen doing that inline is kept on its lane (``waits``).
    """

    WINDOW = 31

    def __init__(self) -> None:
        self._recent: deque[float] = deque(maxlen=self.WINDOW)
        self._median: float | None = None
        self._added = 0
        self.waited = 0
        """Timed inline calls in a row that waited more than they worked."""
        self.waits = False

    def add(self, seconds: float) -> None:
        self._recent.append(seconds)
        self._added += 1
        if self._added % 8 == 1 or self._added < 8:  # a median every few calls is plenty
            self._median = statistics.median(self._recent)

    def cheap(self, below_ms: float) -> bool:
        return not self.waits and self._median is not None and self._median * 1e3 < below_ms


class InProcessExecutor:
    """Runs the model in the server process: on the event loop when it can, else on the model's lane.

    A call under ``inline_below_ms`` of CPU (median of the model's latest calls) runs on the
    event loop, as a bare endpoint would run it. On a thread it would cost more, not less: a
    forest releases the GIL once per tree, and each release hands the GIL to the loop and back
    (two thread switches), which on a 100-tree forest costs more CPU than the loop gains
    (bench/serve.py measured 4.9 ms of CPU a request inline against 7.4 ms on a lane).

    Calls on the loop take turns with everything else the loop does: once model calls used
    ``turn_ms`` since the loop last looked for I/O, further calls wait in a queue, run by a
    task that yields to the loop between turns. A health probe, or a cheap model's request,
    so waits for about one call of the costliest inline model, never for all the calls queued
    (32 forest calls run back to back would hold a probe for 32 calls).

    A model whose calls cost more, or that waits inside them, runs on its lane, so the loop
    stays free for other requests, health probes and other models while it runs. A model's
    first calls go to the lane until its cost is known.
    """

    capacity = 1

    #: An inline call is timed once in this many (reading a thread's CPU clock is a system call).
    SAMPLE_INLINE = 16
    #: Timed inline calls in a row that must wait (not work) before a model is kept on its lane.
    WAITS_AFTER = 3
    #: A timed inline call that took this long, four times more wall time than CPU, waited.
    WAIT_MS = 2.0

    def __init__(self, inline_below_ms: float = 50.0, turn_ms: float = 5.0) -> None:
        self.inline_below_ms = inline_below_ms
        self.turn_ms = turn_ms
        self._lanes: dict[str, tuple[Lane, _Cost]] = {}
        self._calls = 0
        self._turn_used = 0.0
        """Seconds of model calls on the loop since the loop last looked for I/O."""
        self._new_turn_due = False
        self._waiting: deque[tuple[Callable[[], Arrays], asyncio.Future[Arrays]]] = deque()
        self._drainer: asyncio.Task[None] | None = None

    def _lane(self, model: LoadedModel) -> tuple[Lane, _Cost]:
        key = model.version.ref
        entry = self._lanes.get(key)
        if entry is None:
            entry = self._lanes[key] = (Lane(key), _Cost())
        return entry

    def runs_inline(self, model: LoadedModel) -> bool:
        """Whether a call of ``model`` runs on the event loop within a turn: no deadline could cut it short."""
        entry = self._lanes.get(model.version.ref)
        return entry is not None and entry[1].cheap(min(self.inline_below_ms, self.turn_ms))

    async def run(self, model: LoadedModel, arrays: Arrays) -> Arrays:
        lane, cost = self._lane(model)
        if cost.cheap(self.inline_below_ms):
            if self._waiting or self._turn_used * 1e3 >= self.turn_ms:
                return await self._wait_for_turn(lambda: self._inline(model, arrays, cost))
            return self._inline(model, arrays, cost)

        def call() -> Arrays:
            started = time.thread_time()
            try:
                return model.run(arrays)
            finally:
                cost.add(time.thread_time() - started)

        return await lane.submit(call)  # type: ignore[no-any-return]

    def _inline(self, model: LoadedModel, arrays: Arrays, cost: _Cost) -> Arrays:
        started = time.perf_counter()
        try:
            self._calls += 1
            if self._calls % self.SAMPLE_INLINE:
                return model.run(arrays)
            cpu = time.thread_time()
            result = model.run(arrays)
            wall, cpu = time.perf_counter() - started, time.thread_time() - cpu
            cost.add(cpu)
            waited = wall * 1e3 >= self.WAIT_MS and cpu * 4 < wall  # mostly waiting, not working
            # a process descheduled mid-call looks the same once: only a model that keeps doing it waits
            cost.waited = cost.waited + 1 if waited else 0
            if cost.waited >= self.WAITS_AFTER:
                cost.waits = True  # it held the loop waiting, not working: its lane from now on
                logger.info("%s waits inside its calls (%.1f ms, %.1f ms of it working): it runs on its "
                            "own thread from now on", model.version.ref, wall * 1e3, cpu * 1e3)
            return result
        finally:
            self._turn_used += time.perf_counter() - started
            if not self._new_turn_due:
                # a callback scheduled now runs after the loop's next look for I/O
                self._new_turn_due = True
                asyncio.get_running_loop().call_soon(self._new_turn)

    def _new_turn(self) -> None:
        self._turn_used, self._new_turn_due = 0.0, False

    def _wait_for_turn(self, call: Callable[[], Arrays]) -> asyncio.Future[Arrays]:
        future: asyncio.Future[Arrays] = asyncio.get_running_loop().create_future()
        self._waiting.append((call, future))
        if self._drainer is None:
            self._drainer = asyncio.get_running_loop().create_task(self._drain())
        return future

    async def _drain(self) -> None:
        """Run the waiting calls in order, a turn's worth at a time."""
        try:
            while self._waiting:
                if self._turn_used * 1e3 >= self.turn_ms:
                    await asyncio.sleep(0)  # the loop looks for I/O, then a new turn begins
                    continue
                call, future = self._waiting.popleft()
                if future.done():  # its caller gave up (deadline)
                    continue
                try:
                    result = call()
                except BaseException as exc:  # delivered to the caller, never lost with the task
                    future.set_exception(exc)
                else:
                    future.set_result(result)
        finally:
            self._drainer = None

    def release(self, name: str, version: int) -> None:
        """Stop the lane of a version no longer served (calls already queued on it finish first)."""
        entry = self._lanes.pop(f"{name}:{version}", None)
        if entry is not None:
            entry[0].close()

    async def close(self) -> None:
        if self._drainer is not None:
            self._drainer.cancel()
        for _, future in self._waiting:
            future.cancel()
        self._waiting.clear()
        threads = [t for lane, _ in self._lanes.values() if (t := lane.close()) is not None]
        self._lanes.clear()
        if threads:
            import anyio.to_thread

            def join() -> None:
                for thread in threads:
                    thread.join()

            await anyio.to_thread.run_sync(join)
