"""Where a model call runs: in this process (inline or on a thread), or in worker processes.

Every executor has the same shape: ``await executor.run(model, arrays)`` with inputs
that already passed the signature, and ``capacity``, how many calls it can run at
once (the batcher keeps that many batches in flight).
"""

from __future__ import annotations

import time
from typing import Protocol

import anyio.to_thread

from shipyard.registry import LoadedModel
from shipyard.runtime.base import Arrays


class Executor(Protocol):
    capacity: int

    async def run(self, model: LoadedModel, arrays: Arrays) -> Arrays:
        """Predict on validated inputs."""
        ...

    async def close(self) -> None:
        """Stop whatever the executor started."""
        ...


class InProcessExecutor:
    """Runs the model in the server process.

    Short calls run inline on the event loop: a thread hop would cost more than
    the call (and the model holds the GIL anyway). Calls whose running average
    exceeds ``inline_below_ms`` go to a thread so health probes and other models
    stay responsive while they run. The first call of a model always uses a thread.
    """

    capacity = 1

    def __init__(self, inline_below_ms: float = 10.0) -> None:
        self.inline_below_ms = inline_below_ms
        self._avg_ms: dict[int, float] = {}

    async def run(self, model: LoadedModel, arrays: Arrays) -> Arrays:
        key = id(model)
        avg = self._avg_ms.get(key)
        started = time.perf_counter()
        if avg is not None and avg < self.inline_below_ms:
            result = model.run(arrays)
        else:
            result = await anyio.to_thread.run_sync(model.run, arrays)
        took = (time.perf_counter() - started) * 1e3
        self._avg_ms[key] = took if avg is None else 0.9 * avg + 0.1 * took
        return result

    async def close(self) -> None:
        self._avg_ms.clear()


