"""The one request path: every transport routes once and emits one event per request to the observers."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression

from shipyard.config import Settings
from shipyard.context import RequestContext
from shipyard.monitoring.events import PredictionEvent
from shipyard.protocol.grpc import codec
from shipyard.registry import Registry
from shipyard.rollout.router import AliasRouter, Route
from shipyard.serving.grpc.service import InferenceServicer
from shipyard.serving.server import Server, build_server, started
from shipyard.types import InferenceRequest, Tensor

pytestmark = pytest.mark.anyio

X = pd.DataFrame({"x1": [0.0, 1.0, 2.0, 3.0, 4.0, 5.0], "x2": [5.0, 4.0, 0.0, 1.0, 3.0, 2.0]})
Y = (X["x1"] > X["x2"]).astype(int)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Recorder:
    """An observer that keeps every event (and the thread it was called on)."""

    def __init__(self) -> None:
        self.events: list[PredictionEvent] = []
        self.threads: set[str] = set()
        self.flushed = 0

    def observe(self, events: Sequence[PredictionEvent]) -> None:
        self.threads.add(threading.current_thread().name)
        self.events.extend(events)

    def flush(self) -> None:
        self.flushed += 1


class CountingRouter(AliasRouter):
    def __init__(self, router: AliasRouter) -> None:
        super().__init__(router.repository)
        self.calls = 0

    def route(self, name: str, version: str | None, ctx: RequestContext) -> Route:
        self.calls += 1
        return super().route(name, version, ctx)


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Settings, Registry]]:
    settings = Settings(home=tmp_path_factory.mktemp("path") / "home", workers=1, alias_refresh_seconds=0,
                        cache_size=16, async_broker="")
    registry = Registry.from_settings(settings)
    try:
        registry.register(LogisticRegression().fit(X, Y), "m", sample=X.head(3), alias="champion")
        registry.register(LogisticRegression().fit(X, 1 - Y), "m", sample=X.head(3))
        yield settings, registry
    finally:
        registry.close()


@pytest.fixture
async def served(shared: tuple[Settings, Registry]) -> AsyncIterator[tuple[Server, Recorder, CountingRouter]]:
    settings, registry = shared
    recorder = Recorder()
    server = build_server(settings, ["m@champion"], registry=registry, observers=[recorder])
    router = CountingRouter(server.dataplane.router)  # type: ignore[arg-type]
    server.dataplane.router = router
    async with started(server):
        yield server, recorder, router
    assert recorder.flushed == 1  # flushed once, at shutdown


def http(server: Server) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=server.app), base_url="http://shipyard.test")


def delivered(server: Server, n: int) -> None:
    server.dataplane.observers.drain()
    assert server.dataplane.observers.delivered >= n


async def test_every_transport_routes_once_and_emits_one_event(
    served: tuple[Server, Recorder, CountingRouter],
) -> None:
    server, recorder, router = served
    rows = X.head(2)
    v2 = {"inputs": [{"name": c, "datatype": "FP64", "shape": [2], "data": rows[c].tolist()} for c in rows]}
    async with http(server) as c:
        assert (await c.post("/v2/models/m/infer", json=v2, headers={"x-request-id": "r-v2"})).status_code == 200
        assert (await c.post("/v1/models/m:predict", json={"instances": rows.to_dict("records")},
                             headers={"x-request-id": "r-v1"})).status_code == 200
        assert (await c.post("/invocations", json={"dataframe_records": rows.to_dict("records")},
                             headers={"x-request-id": "r-mlflow"})).status_code == 200
        q = {"query": "query($r: JSON!) { predict(model: \"m\", records: $r) { modelVersion } }",
             "variables": {"r": rows.to_dict("records")}}
        assert "errors" not in (await c.post("/graphql", json=q, headers={"x-request-id": "r-gql"})).json()
    grpc_request = codec.encode_request(InferenceRequest([Tensor(k, rows[k].to_numpy()) for k in rows]), "m")

    class Ctx:
        def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
            return (("x-request-id", "r-grpc"),)

        def set_trailing_metadata(self, md: Any) -> None:
            pass

    await InferenceServicer(server.dataplane).ModelInfer(grpc_request, Ctx())
    delivered(server, 5)
    assert router.calls == 5  # once per request, never a second resolution
    by_id = {e.context.request_id: e for e in recorder.events}
    assert {k: v.context.transport for k, v in by_id.items()} == {
        "r-v2": "rest", "r-v1": "rest", "r-mlflow": "rest", "r-gql": "graphql", "r-grpc": "grpc"}
    for event in by_id.values():
        assert (event.model, event.version, event.route, event.outcome, event.rows) == ("m", 1, "champion", "ok", 2)
        assert event.inputs is not None and event.outputs is not None and event.latency_s > 0
        assert len(event.context.prediction_id) == 32 and event.context.prediction_id != event.context.request_id
    assert len({e.context.prediction_id for e in recorder.events}) == 5
    assert recorder.threads == {"shipyard-observers"}  # never on the request path


async def test_failures_and_cache_hits_are_events_too(served: tuple[Server, Recorder, CountingRouter]) -> None:
    server, recorder, router = served
    good = {"instances": [{"x1": 1.0, "x2": 2.0}]}
    async with http(server) as c:
        assert (await c.post("/v1/models/m:predict", json={"instances": [{"x1": 1.0}]})).status_code == 400
        assert (await c.post("/v1/models/m:predict", json=good)).status_code == 200
        assert (await c.post("/v1/models/m:predict", json=good)).status_code == 200  # from the cache
        assert (await c.post("/v1/models/nope:predict", json=good)).status_code == 404  # never routed
    delivered(server, 3)
    failed, first, hit = recorder.events
    assert failed.outcome == "invalid_input" and failed.inputs is None and "x2" in (failed.error or "")
    assert (first.cached, hit.cached) == (False, True)
    np.testing.assert_array_equal(first.outputs["predict"], hit.outputs["predict"])  # type: ignore[index]
    stats = (await server.dataplane.model_statistics("m:1"))["model_stats"][0]["inference_stats"]
    assert stats["fail"]["count"] == 1 and stats["success"]["count"] == 2


async def test_an_observer_that_raises_never_fails_a_request(shared: tuple[Settings, Registry]) -> None:
    settings, registry = shared

    class Broken(Recorder):
        def observe(self, events: Sequence[PredictionEvent]) -> None:
            raise RuntimeError("observer bug")

    recorder = Recorder()
    server = build_server(settings, ["m"], registry=registry, observers=[Broken(), recorder])
    async with started(server), http(server) as c:
        for _ in range(3):
            assert (await c.post("/v1/models/m:predict", json={"instances": [{"x1": 1, "x2": 2}]})).status_code == 200
        delivered(server, 3)
    assert len(recorder.events) == 3  # the other observer still saw everything


async def test_a_full_queue_drops_and_counts(shared: tuple[Settings, Registry]) -> None:
    settings, registry = shared
    gate = threading.Event()

    class Slow(Recorder):
        def observe(self, events: Sequence[PredictionEvent]) -> None:
            gate.wait(10)
            super().observe(events)

    slow = Slow()
    server = build_server(settings, ["m"], registry=registry, observers=[slow])
    server.dataplane.observers = type(server.dataplane.observers)([slow], max_queue=2, max_batch=1)
    server.services.services = [s if s.name != "observers" else _hooks(server) for s in server.services.services]
    async with started(server), http(server) as c:
        for _ in range(6):  # one taken by the blocked observer, two queued, the rest dropped
            assert (await c.post("/v1/models/m:predict", json={"instances": [{"x1": 1, "x2": 2}]})).status_code == 200
        await asyncio.sleep(0)
        dropped = server.dataplane.observers.dropped
        gate.set()
    assert dropped >= 3 and len(slow.events) + dropped == 6


def _hooks(server: Server) -> Any:
    from shipyard.serving.services import Hooks

    o = server.dataplane.observers
    return Hooks("observers", o.start, o.stop)


async def test_alias_move_preloads_then_switches_and_releases_the_old_version(
    shared: tuple[Settings, Registry],
) -> None:
    settings, registry = shared
    recorder = Recorder()
    server = build_server(settings.replace(alias_refresh_seconds=60, cache_size=0), ["m@champion"],
                          registry=registry, observers=[recorder])
    repo = server.repository
    repo.release_after_seconds = 0.01
    released: list[tuple[str, int]] = []
    repo.on_release(lambda name, version: released.append((name, version)))
    try:
        async with started(server), http(server) as c:
            body = {"instances": [{"x1": 1.0, "x2": 2.0}]}
            assert (await c.post("/v1/models/m:predict", json=body)).json()["model_version"] == "1"
            registry.set_alias("m", "champion", 2)
            # the watcher follows the alias: until it re-reads it, traffic stays on version 1
            assert (await c.post("/v1/models/m:predict", json=body)).json()["model_version"] == "1"
            await repo.refresh()  # what the watcher runs every alias_refresh_seconds
            assert {mv.version for mv in repo.loaded_versions()} == {1, 2} or released
            assert (await c.post("/v1/models/m:predict", json=body)).json()["model_version"] == "2"
            for _ in range(100):
                if released:
                    break
                await asyncio.sleep(0.01)
            assert released == [("m", 1)] and {mv.version for mv in repo.loaded_versions()} == {2}
            # a request naming the released version loads it again on demand
            assert (await c.post("/v2/models/m/versions/1/infer", json={"inputs": [
                {"name": "x1", "datatype": "FP64", "shape": [1], "data": [1.0]},
                {"name": "x2", "datatype": "FP64", "shape": [1], "data": [2.0]}]})).status_code == 200
            server.dataplane.observers.drain()
            assert [e.route for e in recorder.events] == ["champion", "champion", "champion", "1"]
    finally:
        registry.set_alias("m", "champion", 1)


async def test_a_served_alias_deleted_keeps_its_last_version_with_one_warning(
    shared: tuple[Settings, Registry], caplog: pytest.LogCaptureFixture,
) -> None:
    settings, registry = shared
    registry.set_alias("m", "doomed", 2)
    server = build_server(settings.replace(alias_refresh_seconds=60, cache_size=0), ["m@doomed"], registry=registry)
    repo = server.repository
    body = {"instances": [{"x1": 1.0, "x2": 2.0}]}
    async with started(server), http(server) as c:
        registry.delete_alias("m", "doomed")
        with caplog.at_level(logging.WARNING, logger="shipyard.hosting.repository"):
            await repo.refresh()
            await repo.refresh()
        assert (await c.post("/v1/models/m:predict", json=body)).json()["model_version"] == "2"
        warnings = [r.getMessage() for r in caplog.records if r.name == "shipyard.hosting.repository"]
        assert len(warnings) == 1 and "still serving version 2 for m@doomed" in warnings[0]
        assert not any(r.exc_info for r in caplog.records)
        registry.set_alias("m", "doomed", 1)  # set again: followed again
        await repo.refresh()
        assert (await c.post("/v1/models/m:predict", json=body)).json()["model_version"] == "1"


async def test_services_start_in_order_and_stop_in_reverse_also_when_one_fails() -> None:
    from shipyard.serving.services import Hooks, Services

    log: list[str] = []

    def service(name: str, fail: bool = False) -> Hooks:
        async def start() -> None:
            if fail:
                raise RuntimeError(f"{name} failed")
            log.append(f"start {name}")

        async def stop() -> None:
            log.append(f"stop {name}")

        return Hooks(name, start, stop)

    async with Services([service("a"), service("b")]).running():
        log.append("serving")
    assert log == ["start a", "start b", "serving", "stop b", "stop a"]
    log.clear()
    with pytest.raises(RuntimeError, match="c failed"):
        await Services([service("a"), service("b"), service("c", fail=True), service("d")]).start()
    assert log == ["start a", "start b", "stop b", "stop a"]


def test_the_server_lists_its_services_in_start_order(shared: tuple[Settings, Registry]) -> None:
    settings, registry = shared
    server = build_server(settings.replace(async_broker="local://shipyard"), ["m"], registry=registry)
    assert server.services.names == ["graph step pools", "models", "traffic policies", "drift monitor", "observers",
                                     "data plane", "alias watcher", "traffic-policy watcher", "rollout controller",
                                     "asynchronous requests"]
