"""A served graph's steps: each one a model call on the data plane's request path, traced, timed and counted."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from shipyard.graphs.remote import RemoteStep
from shipyard.monitoring.metrics import ServingMetrics
from shipyard.monitoring.tracing import Tracing
from shipyard.registry.loaded import LoadedModel
from shipyard.runtime.base import Arrays

#: Name of the child span of each step (attributes ``shipyard.graph``, ``shipyard.step``, ``shipyard.model``).
STEP_SPAN = "graph.step"


class ServedSteps:
    """The host a data plane gives a graph: ``call`` runs a step through ``run_model`` (lane, batcher, admission).

    Args:
        run_model: the data plane's model call for validated inputs.
        tracing: the request's tracing (a ``graph.step`` span per step, a child of the request's).
        metrics: where each step's latency and failures go (None: not recorded).
    """

    def __init__(self, run_model: Callable[[LoadedModel, Arrays], Awaitable[Arrays]], tracing: Tracing,
                 metrics: ServingMetrics | None) -> None:
        self.run_model = run_model
        self.tracing = tracing
        self.metrics = metrics

    async def call(self, graph: str, step: str, model: LoadedModel, arrays: Arrays,
                   remote: RemoteStep | None = None) -> Arrays:
        started = time.perf_counter()
        ok = False
        try:
            with self.tracing.span(STEP_SPAN, {"shipyard.graph": graph, "shipyard.step": step,
                                               "shipyard.model": model.version.ref}):
                out = await (remote.infer(arrays) if remote is not None else self.run_model(model, arrays))
            ok = True
            return out
        finally:
            if self.metrics is not None:
                self.metrics.graph_step(graph, step, time.perf_counter() - started, ok)

    async def gather(self, calls: Sequence[Awaitable[Any]]) -> list[Any]:
        return list(await asyncio.gather(*calls))
