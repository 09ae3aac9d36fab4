"""OpenTelemetry traces of every request: one server span, with decode, validate, queue, model and encode children.

``Tracing`` is built once by the composition root from ``TracingConfig`` and
handed to the data plane (the transports reach it as ``dataplane.tracing``).

Off (the default) it imports nothing from opentelemetry: ``request`` and
``span`` return one shared null span whose methods do nothing, so a request
pays a method call and an empty ``with`` per span, and allocates nothing.

On, it holds a ``TracerProvider`` of its own (never the global one, so several
servers or tests in one process do not share spans) with the ``service.name``
resource, a ``ParentBased(TraceIdRatioBased(sample_ratio))`` sampler and a
``BatchSpanProcessor`` feeding the OTLP/HTTP exporter (extra ``otel``). A
request span continues the caller's W3C ``traceparent`` when there is one.

Which span is current is kept in a context variable of this module: the span
of the request the running task works on. A transport opens the request span
around the data plane call and its own encoding (so encode is a child); the
data plane then joins that span, and opens one itself for callers that did
not (GraphQL, Python callers).

A batched request's model call is its batch's: the batcher reports how long
the call that answered it took and how many requests it merged, and the
request's ``model`` span is that call's interval (the same interval in every
request of the batch, with ``shipyard.batch.requests``); its ``queue`` span
runs from submission to that call's start.
"""

from __future__ import annotations

import logging
import time
from contextvars import ContextVar, Token
from types import TracebackType
from typing import TYPE_CHECKING, Any

from shipyard._extras import require
from shipyard.config import TracingConfig
from shipyard.context import RequestContext
from shipyard.errors import ShipyardError
from shipyard.protocol.status import kind_of

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span, Tracer

logger = logging.getLogger(__name__)

EXTRA = "otel"

#: Name of the span of one request; its children are the CHILDREN.
REQUEST_SPAN = "shipyard.infer"
CHILDREN = ("decode", "validate", "queue", "model", "encode")


class RequestSpan:
    """A request's span as the data plane and transports see it; this base is the null span (tracing off).

    Used as a context manager, it is also the null span of every child (``Tracing.span``).
    """

    __slots__ = ()

    trace_id: str | None = None
    """The request's trace id in hex (None when tracing is off)."""

    def routed(self, model: str, version: int, route: str) -> None:
        """The model, version and route label the request went to."""

    def finished(self, rows: int, outcome: str) -> None:
        """How the request ended: rows predicted, ``ok`` or the error kind."""

    def traceparent(self) -> str | None:
        """The W3C ``traceparent`` naming this span (for a response header), or None."""
        return None

    def __enter__(self) -> RequestSpan:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        return None


_NULL = RequestSpan()

_current: ContextVar[_OtelRequestSpan | None] = ContextVar("shipyard_request_span", default=None)


class BatchRun:
    """What the batcher reports to one request: the model call that answered it (``Batcher.submit(on_run=...)``)."""

    __slots__ = ("submitted_ns", "started_ns", "ended_ns", "requests")

    def __init__(self) -> None:
        self.submitted_ns = time.time_ns()
        self.started_ns: int | None = None
        self.ended_ns: int | None = None
        self.requests = 0

    def __call__(self, took: float, requests: int) -> None:
        # called by the batcher as the call ends: its end is now, its start ``took`` seconds before
        self.ended_ns = time.time_ns()
        self.started_ns = max(self.submitted_ns, self.ended_ns - int(took * 1e9))
        self.requests = requests


class Tracing:
    """Traces of requests, or nothing at all when ``config.enabled`` is false.

    Args:
        config: the ``monitoring.tracing`` settings (default: off).
        exporter: where spans go instead of OTLP/HTTP (tests pass the SDK's ``InMemorySpanExporter``).
    """

    name = "tracing"

    def __init__(self, config: TracingConfig | None = None, *, exporter: SpanExporter | None = None) -> None:
        self.config = config or TracingConfig()
        self.enabled = self.config.enabled
        self.provider: TracerProvider | None = None
        self._tracer: Tracer | None = None
        if self.enabled:
            self.provider, self._tracer = _provider(self.config, exporter)

    # -- the request path ---------------------------------------------------------

    def request(self, ctx: RequestContext) -> RequestSpan:
        """The span of the request ``ctx``: a new server span, or the one already open for ``ctx`` (joined).

        Use as a context manager; the span that opened it ends it, recording an exception as an error.
        """
        if self._tracer is None:
            return _NULL
        current = _current.get()
        if current is not None and current.ctx is ctx:
            return _Joined(current)
        return _OtelRequestSpan(self._tracer, ctx)

    def span(self, name: str, attributes: dict[str, Any] | None = None) -> Any:
        """A child span of the current request's span (a context manager); the null span without one."""
        if self._tracer is None:
            return _NULL
        current = _current.get()
        if current is None or not current.recording:
            return _NULL
        return self._tracer.start_as_current_span(name, context=current.context, attributes=attributes,
                                                  record_exception=True, set_status_on_exception=True)

    def batch_run(self) -> BatchRun | None:
        """A recorder for ``Batcher.submit(on_run=...)`` when the current request is traced; else None."""
        if self._tracer is None:
            return None
        current = _current.get()
        return BatchRun() if current is not None and current.recording else None

    def batched(self, run: BatchRun) -> None:
        """Record a batched request's ``queue`` and ``model`` spans from what its batcher reported.

        A request that never ran (refused, timed out in the queue) gets a queue span up to now.
        """
        current = _current.get()
        if self._tracer is None or current is None:
            return
        queued_until = run.started_ns if run.started_ns is not None else time.time_ns()
        self._tracer.start_span("queue", context=current.context, start_time=run.submitted_ns).end(queued_until)
        if run.started_ns is not None:
            model = self._tracer.start_span("model", context=current.context, start_time=run.started_ns,
                                            attributes={"shipyard.batch.requests": run.requests})
            model.end(run.ended_ns)

    # -- lifecycle (a service of the server) -----------------------------------------

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        """Export the spans still buffered, then shut the provider down."""
        if self.provider is not None:
            import anyio.to_thread

            await anyio.to_thread.run_sync(self.provider.shutdown)  # blocking: the last export is HTTP

    def flush(self, timeout_millis: int = 30_000) -> bool:
        """Export what is buffered now (tests); True when it all went."""
        return self.provider.force_flush(timeout_millis) if self.provider is not None else True


class _OtelRequestSpan(RequestSpan):
    """A request's server span, current in this task while it is open."""

    __slots__ = ("ctx", "span", "context", "recording", "_token", "trace_id", "_outcome")

    def __init__(self, tracer: Tracer, ctx: RequestContext) -> None:
        from opentelemetry import trace
        from opentelemetry.trace import SpanKind

        parent = None
        if ctx.traceparent:
            from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

            parent = TraceContextTextMapPropagator().extract({"traceparent": ctx.traceparent})
        self.ctx = ctx
        self.span: Span = tracer.start_span(REQUEST_SPAN, context=parent, kind=SpanKind.SERVER, attributes={
            "shipyard.transport": ctx.transport,
            "shipyard.request_id": ctx.request_id,
            "shipyard.prediction_id": ctx.prediction_id,
        })
        self.context = trace.set_span_in_context(self.span)
        self.recording = self.span.is_recording()
        self.trace_id = trace.format_trace_id(self.span.get_span_context().trace_id)
        self._token: Token[_OtelRequestSpan | None] | None = None
        self._outcome = False

    def routed(self, model: str, version: int, route: str) -> None:
        self.span.set_attributes({"shipyard.model": model, "shipyard.version": version, "shipyard.route": route})

    def finished(self, rows: int, outcome: str) -> None:
        self.span.set_attributes({"shipyard.rows": rows, "shipyard.outcome": outcome})
        self._outcome = True

    def traceparent(self) -> str | None:
        sc = self.span.get_span_context()
        return f"00-{sc.trace_id:032x}-{sc.span_id:016x}-{int(sc.trace_flags):02x}"

    def __enter__(self) -> RequestSpan:
        self._token = _current.set(self)
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._token is not None:
            _current.reset(self._token)
            self._token = None
        if exc is not None:
            from opentelemetry.trace import Status, StatusCode

            if not self._outcome:  # failed before the data plane said how (routing, a transport)
                outcome = kind_of(exc) if isinstance(exc, ShipyardError) else "internal"
                self.span.set_attribute("shipyard.outcome", outcome)
            self.span.record_exception(exc)
            self.span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"[:500]))
        self.span.end()


class _Joined(RequestSpan):
    """The request span someone else opened (the transport): usable, ended by its opener."""

    __slots__ = ("inner", "trace_id")

    def __init__(self, inner: _OtelRequestSpan) -> None:
        self.inner = inner
        self.trace_id = inner.trace_id

    def routed(self, model: str, version: int, route: str) -> None:
        self.inner.routed(model, version, route)

    def finished(self, rows: int, outcome: str) -> None:
        self.inner.finished(rows, outcome)

    def traceparent(self) -> str | None:
        return self.inner.traceparent()


def _provider(config: TracingConfig, exporter: SpanExporter | None) -> tuple[TracerProvider, Tracer]:
    """The provider of one server: its resource, sampler, and batch processor over the exporter."""
    require("opentelemetry.sdk.trace", EXTRA, "opentelemetry-sdk")
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    if exporter is None:
        otlp = require("opentelemetry.exporter.otlp.proto.http.trace_exporter", EXTRA,
                       "opentelemetry-exporter-otlp-proto-http")
        # no endpoint: the exporter reads OTEL_EXPORTER_OTLP_TRACES_ENDPOINT / OTEL_EXPORTER_OTLP_ENDPOINT
        exporter = otlp.OTLPSpanExporter(endpoint=config.endpoint or None)
    provider = TracerProvider(resource=Resource.create({"service.name": config.service_name}),
                              sampler=ParentBased(TraceIdRatioBased(config.sample_ratio)))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    from shipyard import __version__

    return provider, provider.get_tracer("shipyard", __version__)
