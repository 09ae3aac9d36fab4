"""A served graph's steps: each one a model call on the data plane's request path, traced, timed and counted.

Each step call is also a prediction of the step's own version, seen by the server's observers
(prediction log, metrics, drift) as an event of its own: the request's context with the prediction
id ``GRAPH_PREDICTION_ID.STEP`` (the graph's prediction id, a dot, the step's name, or a digest of a
name too long for the log's key), and the route ``GRAPH/STEP``. So the log holds each step's inputs
and outputs under the graph's prediction id, and a step whose version has a reference profile gets
its own drift reports.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import time
from collections.abc import Awaitable, Callable, Sequence
from contextvars import ContextVar
from typing import Any, TypeVar

import anyio.to_thread

from shipyard.context import RequestContext
from shipyard.errors import ShipyardError
from shipyard.graphs.remote import RemoteStep
from shipyard.monitoring.events import Observers, PredictionEvent
from shipyard.monitoring.metrics import ServingMetrics
from shipyard.monitoring.tracing import Tracing
from shipyard.protocol.status import kind_of
from shipyard.registry.loaded import LoadedModel
from shipyard.runtime.base import Arrays

#: Name of the child span of each step (attributes ``shipyard.graph``, ``shipyard.step``, ``shipyard.model``).
STEP_SPAN = "graph.step"

#: The request a graph runs for (set by the data plane around a request; None: no step events).
graph_request: ContextVar[RequestContext | None] = ContextVar("shipyard_graph_request", default=None)

T = TypeVar("T")

_MAX_ID = 64
"""Longest prediction id the prediction log keeps."""


def step_prediction_id(prediction_id: str, step: str) -> str:
    """The prediction id of a step's event: the graph's, a dot, the step's name (or its digest when too long)."""
    candidate = f"{prediction_id}.{step}"
    if len(candidate) <= _MAX_ID:
        return candidate
    return f"{prediction_id}.{hashlib.blake2b(step.encode(), digest_size=8).hexdigest()}"


class StepVersions:
    """Which step versions each loaded graph version runs, so a released graph's steps can be released too.

    Its steps' lanes and batchers live in the data plane under the steps' own versions; when the
    graph version goes, those of its steps that nothing else loaded runs (served by name, or a
    step of another loaded graph) go with it.
    """

    def __init__(self) -> None:
        self._steps: dict[tuple[str, int], frozenset[tuple[str, int]]] = {}

    def loaded(self, key: tuple[str, int], model: LoadedModel | None) -> None:
        """``model`` (loaded as ``key``) was loaded: remember its steps when it is a graph."""
        plan = getattr(getattr(model, "runtime", None), "plan", None)
        models = getattr(plan, "models", None)
        if models:
            self._steps[key] = frozenset((m.name, m.version.version) for m in models.values())

    def released(self, key: tuple[str, int], loaded: set[tuple[str, int]]) -> list[tuple[str, int]]:
        """The step versions to release with the graph version ``key``: none of the ``loaded`` versions
        (the versions still loaded) is one of them or runs one as a step."""
        steps = self._steps.pop(key, None)
        if not steps:
            return []
        kept = set(loaded)
        for graph, used in list(self._steps.items()):
            if graph in loaded:
                kept |= used
        return sorted(steps - kept)


class ServedSteps:
    """The host a data plane gives a graph: ``call`` runs a step through ``run_model`` (lane, batcher, admission).

    Args:
        run_model: the data plane's model call for validated inputs.
        tracing: the request's tracing (a ``graph.step`` span per step, a child of the request's).
        metrics: where each step's latency and failures go (None: not recorded).
        observers: who sees each step's prediction (None or empty: nobody).
    """

    def __init__(self, run_model: Callable[[LoadedModel, Arrays], Awaitable[Arrays]], tracing: Tracing,
                 metrics: ServingMetrics | None, observers: Observers | None = None) -> None:
        self.run_model = run_model
        self.tracing = tracing
        self.metrics = metrics
        self.observers = observers
        self.versions = StepVersions()
        """The step versions of each loaded graph version (what to release with it)."""

    async def call(self, graph: str, step: str, model: LoadedModel, arrays: Arrays,
                   remote: RemoteStep | None = None) -> Arrays:
        wall = time.time()
        started = time.perf_counter()
        out: Arrays | None = None
        error: BaseException | None = None
        try:
            with self.tracing.span(STEP_SPAN, {"shipyard.graph": graph, "shipyard.step": step,
                                               "shipyard.model": model.version.ref}):
                out = await (remote.infer(arrays) if remote is not None else self.run_model(model, arrays))
            return out
        except BaseException as exc:
            error = exc
            raise
        finally:
            took = time.perf_counter() - started
            if self.metrics is not None:
                self.metrics.graph_step(graph, step, took, error is None)
            if self.observers:
                self._emit(graph, step, model, arrays, out, error, wall, took)

    def _emit(self, graph: str, step: str, model: LoadedModel, arrays: Arrays, out: Arrays | None,
              error: BaseException | None, wall: float, took: float) -> None:
        ctx = graph_request.get()
        if ctx is None or self.observers is None:
            return
        outcome = "ok" if error is None else (kind_of(error) if isinstance(error, ShipyardError) else "internal")
        first = next(iter(arrays.values()), None)
        rows = 0 if first is None else (int(first.shape[0]) if first.ndim else 1)
        self.observers.emit(PredictionEvent(
            context=dataclasses.replace(ctx, prediction_id=step_prediction_id(ctx.prediction_id, step)),
            model=model.name, version=model.version.version, route=f"{graph}/{step}"[:256], inputs=arrays,
            outputs=out, started_at=wall, latency_s=took, outcome=outcome, rows=rows,
            error=None if error is None else str(error),
        ))

    async def gather(self, calls: Sequence[Awaitable[Any]]) -> list[Any]:
        return list(await asyncio.gather(*calls))

    async def offload(self, graph: str, step: str, ref: str, work: Callable[[Arrays], T], arrays: Arrays) -> T:
        """A step's work that is not a model call (an explanation): on a worker thread, with its span and series."""
        started = time.perf_counter()
        ok = False
        try:
            with self.tracing.span(STEP_SPAN, {"shipyard.graph": graph, "shipyard.step": step, "shipyard.model": ref}):
                result = await anyio.to_thread.run_sync(work, arrays)
            ok = True
            return result
        finally:
            if self.metrics is not None:
                self.metrics.graph_step(graph, step, time.perf_counter() - started, ok)
