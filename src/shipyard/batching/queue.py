"""The batch queue of one model version: collects requests, calls the model, hands answers back.

``submit`` never blocks the caller for admission: when ``max_queue`` requests are
already waiting or running, it raises ``Overloaded`` at once (the transport turns
that into 503 + Retry-After), so memory stays bounded and the requests already
accepted keep their latency. Up to ``concurrency`` batches run at a time (one per
worker process). The policy decisions are the pure functions in ``policy.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from shipyard.batching.merge import Arrays, merge, rows, shape_key, split
from shipyard.batching.policy import BatchPolicy, next_limit, should_wait, take
from shipyard.config import Settings
from shipyard.errors import Overloaded

logger = logging.getLogger(__name__)


@dataclass
class _Item:
    arrays: Arrays
    rows: int
    key: Any
    future: asyncio.Future[Arrays]
    queued_at: float = field(default=0.0)
    on_run: Callable[[float, int], None] | None = None


class Batcher:
    """Adaptive batching for one model version."""

    def __init__(
        self,
        call: Callable[[Arrays], Awaitable[Arrays]],
        policy: BatchPolicy,
        *,
        name: str = "model",
        concurrency: int = 1,
        max_queue: int = Settings.max_queue,  # one default, in Settings
        clock: Callable[[], float] = time.monotonic,
        on_batch: Callable[[int, int, float, float], None] | None = None,
    ) -> None:
        """``on_batch(requests, rows, queued, took)`` hears of every model call that succeeded:
        how many requests it merged, their rows, their summed wait before it, and its duration
        (seconds of ``clock``)."""
        self._call = call
        self._on_batch = on_batch
        self.policy = policy
        self.name = name
        self.max_queue = max_queue
        self.limit = policy.initial_limit()
        self._clock = clock
        self._queue: deque[_Item] = deque()
        self._wakeup = asyncio.Event()
        self._slots = asyncio.Semaphore(concurrency)
        self._admitted = 0
        self._task: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()
        self.batches = 0
        self.batched_rows = 0

    @property
    def queued(self) -> int:
        return self._admitted

    async def submit(self, arrays: Arrays, on_run: Callable[[float, int], None] | None = None) -> Arrays:
        """Queue one validated request; returns its own slice of the batch's outputs.

        ``on_run(took, requests)`` hears, as it ends, of the model call that answered the
        request (or failed it): its duration (seconds of ``clock``) and how many requests it merged.
        """
        if self._admitted >= self.max_queue:
            raise Overloaded(self.name, self._admitted)
        loop = asyncio.get_running_loop()
        item = _Item(arrays, rows(arrays), shape_key(arrays), loop.create_future(), self._clock(), on_run)
        self._queue.append(item)
        self._admitted += 1
        self._wakeup.set()
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._loop(), name=f"batcher-{self.name}")
        try:
            return await item.future
        finally:
            self._admitted -= 1

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        for t in list(self._running):
            await asyncio.gather(t, return_exceptions=True)

    async def _loop(self) -> None:
        while True:
            try:
                await self._next_batch()
            except asyncio.CancelledError:
                raise
            except Exception:  # the loop must outlive any one batch
                logger.exception("batcher for %s failed; continuing", self.name)

    async def _next_batch(self) -> None:
        while not self._queue:
            self._wakeup.clear()
            await self._wakeup.wait()
        await self._slots.acquire()
        try:
            wait_ms = should_wait(sum(i.rows for i in self._queue), self.limit,
                                  (self._clock() - self._queue[0].queued_at) * 1e3, self.policy)
            if wait_ms > 0:
                self._wakeup.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._fill(), wait_ms / 1e3)
            items = self._pop_batch()
        except BaseException:
            self._slots.release()
            raise
        if not items:
            self._slots.release()
            return
        task = asyncio.get_running_loop().create_task(self._execute(items))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _fill(self) -> None:
        """Return once the queue holds a full batch."""
        while sum(i.rows for i in self._queue) < self.limit:
            self._wakeup.clear()
            await self._wakeup.wait()

    def _pop_batch(self) -> list[_Item]:
        # Drop requests whose callers gave up (timeout, disconnect) before they cost model time.
        while self._queue and self._queue[0].future.done():
            self._queue.popleft()
        if not self._queue:
            return []
        key = self._queue[0].key
        same = [i for i in self._queue if i.key == key and not i.future.done()]
        n = take([i.rows for i in same], self.limit)
        chosen = same[:n]
        chosen_ids = {id(i) for i in chosen}
        self._queue = deque(i for i in self._queue if id(i) not in chosen_ids and not i.future.done())
        return chosen

    async def _execute(self, items: list[_Item]) -> None:
        started = self._clock()
        try:
            try:
                outputs = await self._call(merge([i.arrays for i in items]))
            finally:
                took = self._clock() - started
                for i in items:
                    if i.on_run is not None:
                        i.on_run(took, len(items))
            parts = split(outputs, [i.rows for i in items])
        except BaseException as exc:
            for i in items:
                if not i.future.done():
                    i.future.set_exception(exc if isinstance(exc, Exception) else RuntimeError("cancelled"))
            if not isinstance(exc, Exception):
                raise
        else:
            for i, out in zip(items, parts, strict=True):
                if not i.future.done():
                    i.future.set_result(out)
            if self._on_batch is not None:
                self._on_batch(len(items), sum(i.rows for i in items),
                               sum(started - i.queued_at for i in items), self._clock() - started)
        finally:
            self._slots.release()
            self.batches += 1
            self.batched_rows += sum(i.rows for i in items)
            self.limit = next_limit(self.policy, self.limit, (self._clock() - started) * 1e3)
            if self._queue:
                self._wakeup.set()
