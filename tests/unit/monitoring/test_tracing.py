"""Traces of requests: one server span per request with its steps, continued from the caller; nothing when off."""

from __future__ import annotations

import dataclasses
import sys
import tracemalloc
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from sklearn.linear_model import LogisticRegression

from shipyard.config import MonitoringConfig, Settings, TracingConfig
from shipyard.context import RequestContext
from shipyard.errors import MissingDependency
from shipyard.monitoring.events import PredictionEvent
from shipyard.monitoring.tracing import CHILDREN, REQUEST_SPAN, Tracing
from shipyard.registry import Registry
from shipyard.serving.server import Server, build_server, started

pytestmark = pytest.mark.anyio

X = pd.DataFrame({"x1": [0.0, 1.0, 2.0, 3.0, 4.0, 5.0], "x2": [5.0, 4.0, 0.0, 1.0, 3.0, 2.0]})
Y = (X["x1"] > X["x2"]).astype(int)
CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
CALLER = {"traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Registry]]:
    home = tmp_path_factory.mktemp("tracing") / "home"
    reg = Registry.from_settings(Settings(home=home))
    try:
        reg.register(LogisticRegression().fit(X, Y), "m", sample=X.head(3), alias="champion")
        yield home, reg
    finally:
        reg.close()


class Recorder:
    def __init__(self) -> None:
        self.events: list[PredictionEvent] = []

    def observe(self, events: Sequence[PredictionEvent]) -> None:
        self.events.extend(events)

    def flush(self) -> None:
        pass


def settings(home: Path, *, batching: bool = True, **tracing: Any) -> Settings:
    return Settings(home=home, workers=1, alias_refresh_seconds=0, async_broker="", batching=batching,
                    batch_max_size=8,
                    monitoring=MonitoringConfig(tracing=TracingConfig(**{"enabled": True, **tracing})))


class Traced:
    """A server whose Tracing exports into memory, and what it exported once stopped."""

    def __init__(self, server: Server, exporter: InMemorySpanExporter, recorder: Recorder) -> None:
        self.server, self.exporter, self.recorder = server, exporter, recorder

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=self.server.app), base_url="http://shipyard.test")

    def spans(self) -> list[ReadableSpan]:
        self.server.dataplane.tracing.flush()
        return list(self.exporter.get_finished_spans())


async def traced(s: Settings, registry: Registry) -> AsyncIterator[Traced]:
    exporter = InMemorySpanExporter()
    recorder = Recorder()
    # built with tracing off (no OTLP exporter in unit tests), then traced with the same config into memory
    off = dataclasses.replace(s, monitoring=MonitoringConfig())
    server = build_server(off, ["m@champion"], registry=registry, observers=[recorder])
    server.dataplane.tracing = tracing = Tracing(s.monitoring.tracing, exporter=exporter)
    try:
        async with started(server):
            yield Traced(server, exporter, recorder)
    finally:
        await tracing.stop()


@pytest.fixture
async def batched(registry: tuple[Path, Registry]) -> AsyncIterator[Traced]:
    async for t in traced(settings(registry[0]), registry[1]):
        yield t


def children_of(spans: list[ReadableSpan], root: ReadableSpan) -> list[ReadableSpan]:
    assert root.context is not None
    mine = [s for s in spans if s.parent is not None and s.parent.span_id == root.context.span_id]
    return sorted(mine, key=lambda s: s.start_time or 0)


def roots(spans: list[ReadableSpan]) -> list[ReadableSpan]:
    return [s for s in spans if s.name == REQUEST_SPAN]


ROWS = {"instances": [{"x1": 1.0, "x2": 2.0}, {"x1": 3.0, "x2": 0.0}]}


async def test_each_request_is_one_server_span_with_its_steps_in_order(batched: Traced) -> None:
    async with batched.client() as c:
        for rid in ("r-1", "r-2"):
            r = await c.post("/v1/models/m:predict", json=ROWS, headers={"x-request-id": rid})
            assert r.status_code == 200
    spans = batched.spans()
    requests = roots(spans)
    assert len(requests) == 2
    assert len({s.context.trace_id for s in requests if s.context}) == 2  # a new trace each
    for root, rid in zip(sorted(requests, key=lambda s: s.start_time or 0), ("r-1", "r-2"), strict=True):
        assert root.kind == SpanKind.SERVER and root.parent is None
        assert root.status.status_code == StatusCode.UNSET
        attrs = dict(root.attributes or {})
        assert attrs["shipyard.model"] == "m" and attrs["shipyard.version"] == 1
        assert attrs["shipyard.route"] == "champion" and attrs["shipyard.transport"] == "rest"
        assert attrs["shipyard.request_id"] == rid and len(str(attrs["shipyard.prediction_id"])) == 32
        assert attrs["shipyard.rows"] == 2 and attrs["shipyard.outcome"] == "ok"
        kids = children_of(spans, root)
        assert [k.name for k in kids] == list(CHILDREN)
        for k in kids:
            assert k.context is not None and root.context is not None
            assert k.context.trace_id == root.context.trace_id
            assert (root.start_time or 0) <= (k.start_time or 0) <= (k.end_time or 0) <= (root.end_time or 0)
        queue, model = kids[2], kids[3]
        assert (queue.end_time or 0) <= (model.start_time or 0)  # waited, then ran
        assert dict(model.attributes or {})["shipyard.batch.requests"] == 1
    assert resource_name(requests[0]) == "shipyard"


def resource_name(span: ReadableSpan) -> Any:
    return span.resource.attributes.get("service.name")


async def test_an_incoming_traceparent_is_continued_and_answered(batched: Traced) -> None:
    async with batched.client() as c:
        r = await c.post("/v2/models/m/infer", headers=CALLER, json={
            "inputs": [{"name": n, "datatype": "FP64", "shape": [1], "data": [1.0]} for n in ("x1", "x2")]})
    assert r.status_code == 200
    [root] = roots(batched.spans())
    assert root.context is not None and root.parent is not None
    assert f"{root.context.trace_id:032x}" == CALLER_TRACE
    assert f"{root.parent.span_id:016x}" == CALLER_SPAN and root.parent.is_remote
    assert r.headers["traceparent"] == f"00-{CALLER_TRACE}-{root.context.span_id:016x}-01"
    batched.server.dataplane.observers.drain()
    assert [e.trace_id for e in batched.recorder.events] == [CALLER_TRACE]  # the prediction log carries it


async def test_a_failed_request_is_an_error_span_with_its_exception(batched: Traced) -> None:
    async with batched.client() as c:
        r = await c.post("/v1/models/m:predict", json={"instances": [{"x1": 1.0}]})  # x2 missing
    assert r.status_code == 400
    spans = batched.spans()
    [root] = roots(spans)
    assert root.status.status_code == StatusCode.ERROR
    assert dict(root.attributes or {})["shipyard.outcome"] == "invalid_input"
    assert [e.name for e in root.events] == ["exception"]
    assert "x2" in str(dict(root.events[0].attributes or {})["exception.message"])
    kids = children_of(spans, root)
    assert [k.name for k in kids] == ["decode", "validate"]  # it got no further
    assert kids[1].status.status_code == StatusCode.ERROR


async def test_an_unknown_model_is_an_error_span_without_steps(batched: Traced) -> None:
    async with batched.client() as c:
        assert (await c.post("/v1/models/nope:predict", json=ROWS)).status_code == 404
    spans = batched.spans()
    [root] = roots(spans)
    assert root.status.status_code == StatusCode.ERROR and children_of(spans, root) == []
    assert dict(root.attributes or {})["shipyard.outcome"] == "not_found"
    assert "shipyard.model" not in dict(root.attributes or {})  # never routed


async def test_an_unbatched_request_has_no_queue_span(registry: tuple[Path, Registry]) -> None:
    async for t in traced(settings(registry[0], batching=False), registry[1]):
        async with t.client() as c:
            assert (await c.post("/invocations", json={"dataframe_records": ROWS["instances"]})).status_code == 200
        spans = t.spans()
        [root] = roots(spans)
        assert [k.name for k in children_of(spans, root)] == ["decode", "validate", "model", "encode"]


async def test_python_callers_get_a_span_from_the_data_plane(batched: Traced) -> None:
    from shipyard.types import InferenceRequest, Tensor

    ctx = RequestContext.new("python", "py-1")
    req = InferenceRequest([Tensor(n, X[n].head(2).to_numpy()) for n in ("x1", "x2")])
    await batched.server.dataplane.infer("m", None, req, ctx)
    spans = batched.spans()
    [root] = roots(spans)
    assert dict(root.attributes or {})["shipyard.transport"] == "python"
    assert [k.name for k in children_of(spans, root)] == ["decode", "validate", "queue", "model"]


async def test_sample_ratio_zero_records_nothing(registry: tuple[Path, Registry]) -> None:
    async for t in traced(settings(registry[0], sample_ratio=0.0), registry[1]):
        async with t.client() as c:
            for _ in range(3):
                assert (await c.post("/v1/models/m:predict", json=ROWS)).status_code == 200
        assert t.spans() == []


def test_the_server_stops_tracing_after_the_data_plane(registry: tuple[Path, Registry]) -> None:
    server = build_server(settings(registry[0]), ["m@champion"], registry=registry[1])
    assert server.dataplane.tracing.enabled and server.dataplane.tracing.provider is not None
    names = server.services.names
    assert "tracing" in names and names.index("tracing") < names.index("data plane")  # stopped in reverse


def test_service_name_comes_from_the_config() -> None:
    exporter = InMemorySpanExporter()
    tracing = Tracing(TracingConfig(enabled=True, service_name="fraud-scoring"), exporter=exporter)
    with tracing.request(RequestContext.new("python")):
        pass
    tracing.flush()
    [span] = exporter.get_finished_spans()
    assert resource_name(span) == "fraud-scoring"


async def test_disabled_tracing_imports_no_opentelemetry_and_shares_one_null_span(
    registry: tuple[Path, Registry], monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in [m for m in sys.modules if m == "opentelemetry" or m.startswith("opentelemetry.")]:
        monkeypatch.setitem(sys.modules, name, None)  # importing any of it now raises
    tracing = Tracing(TracingConfig())
    assert not tracing.enabled and tracing.provider is None
    ctx = RequestContext.new("python")
    assert tracing.request(ctx) is tracing.span("decode") is tracing.span("model")
    assert tracing.batch_run() is None
    with tracing.request(ctx) as span:
        assert span.trace_id is None and span.traceparent() is None
    server = build_server(Settings(home=registry[0], workers=1, alias_refresh_seconds=0, async_broker=""),
                          ["m@champion"], registry=registry[1])
    assert server.dataplane.tracing.provider is None
    async with started(server):
        transport = httpx.ASGITransport(app=server.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://shipyard.test") as c:
            r = await c.post("/v1/models/m:predict", json=ROWS, headers=CALLER)
    assert r.status_code == 200 and "traceparent" not in r.headers


def test_the_disabled_path_allocates_nothing_per_request() -> None:
    tracing = Tracing(TracingConfig())
    ctx = RequestContext.new("python")

    def one_request() -> None:
        with tracing.request(ctx) as span:
            span.routed("m", 1, "champion")
            for name in CHILDREN:
                with tracing.span(name):
                    pass
            span.finished(1, "ok")

    one_request()
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        for _ in range(1000):
            one_request()
        after, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert after - before < 1000  # under a byte per request kept
    assert peak - before < 4096  # and nothing built per call beyond the interpreter's own bound methods


def test_enabled_without_the_extra_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.http.trace_exporter", None)
    with pytest.raises(MissingDependency) as info:
        Tracing(TracingConfig(enabled=True))
    assert info.value.extra == "otel" and "shipyard[otel]" in str(info.value)
