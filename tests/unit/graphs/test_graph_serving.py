"""A graph on the data plane's request path, in process: a child span per step, step errors named."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from tests.fixtures.graph_steps import FEATURES, Guard, Scale

from shipyard.config import Settings, TracingConfig
from shipyard.graphs import FanOut, Graph, Node
from shipyard.graphs.host import STEP_SPAN, step_prediction_id
from shipyard.monitoring.events import PredictionEvent
from shipyard.monitoring.tracing import REQUEST_SPAN, Tracing
from shipyard.registry import Registry
from shipyard.serving.server import Server, build_server, started

pytestmark = pytest.mark.anyio

X = pd.DataFrame({f: np.linspace(0.0, 10.0, 6) + i for i, f in enumerate(FEATURES)})


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Registry]]:
    home = tmp_path_factory.mktemp("graph-serving") / "home"
    reg = Registry.from_settings(Settings(home=home))
    try:
        reg.register(Scale(), "scaler", sample=X)
        reg.register(Guard(), "guard", sample=X.head(3))
        reg.register(Graph([Node("check", "guard:1"), Node("scale", "scaler:1"),
                            FanOut("both", [Node("a", "scaler:1"), Node("b", "scaler:1")], join="mean")]), "g")
        yield home, reg
    finally:
        reg.close()


@pytest.fixture
async def server(registry: tuple[Path, Registry]) -> AsyncIterator[tuple[Server, InMemorySpanExporter]]:
    home, reg = registry
    s = Settings(home=home, workers=1, alias_refresh_seconds=0, async_broker="")
    server = build_server(s, ["g"], registry=reg)
    exporter = InMemorySpanExporter()
    server.dataplane.tracing = tracing = Tracing(TracingConfig(enabled=True), exporter=exporter)
    server.dataplane._steps.tracing = tracing
    try:
        async with started(server):
            yield server, exporter
    finally:
        await tracing.stop()


def client(server: Server) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=server.app), base_url="http://shipyard.test")


async def test_each_step_is_a_child_span_of_the_request_naming_graph_step_and_version(
        server: tuple[Server, InMemorySpanExporter]) -> None:
    app, exporter = server
    async with client(app) as c:
        r = await c.post("/v1/models/g:predict", json={"instances": X.to_dict(orient="records")})
    assert r.status_code == 200, r.text
    twice = Scale().process(Scale().process({f: X[f].to_numpy() for f in FEATURES}))
    assert [p["x0"] for p in r.json()["predictions"]] == pytest.approx(twice["x0"].tolist())
    app.dataplane.tracing.flush()
    spans = list(exporter.get_finished_spans())
    [root] = [s for s in spans if s.name == REQUEST_SPAN]
    steps = [s for s in spans if s.name == STEP_SPAN]
    assert root.context is not None
    assert all(s.parent is not None and s.parent.span_id == root.context.span_id for s in steps)
    seen = {(dict(s.attributes or {})["shipyard.step"], dict(s.attributes or {})["shipyard.model"]) for s in steps}
    assert seen == {("check", "guard:1"), ("scale", "scaler:1"), ("a", "scaler:1"), ("b", "scaler:1")}
    assert {dict(s.attributes or {})["shipyard.graph"] for s in steps} == {"g"}


async def test_a_failing_step_fails_its_span_and_the_request_names_it(
        server: tuple[Server, InMemorySpanExporter]) -> None:
    app, exporter = server
    async with client(app) as c:
        r = await c.post("/v1/models/g:predict", json={"instances": X.assign(x0=-500.0).to_dict(orient="records")})
    assert r.status_code == 500
    assert "step 'check' (guard:1) failed" in r.json()["error"]
    app.dataplane.tracing.flush()
    [failed] = [s for s in exporter.get_finished_spans() if s.name == STEP_SPAN]
    assert not failed.status.is_ok and dict(failed.attributes or {})["shipyard.step"] == "check"


async def test_steps_count_in_the_statistics_of_their_own_versions(server: tuple[Server, InMemorySpanExporter]) -> None:
    app, _ = server
    async with client(app) as c:
        assert (await c.post("/v1/models/g:predict", json={"instances": X.head(2).to_dict(orient="records")})
                ).status_code == 200
    # the steps' versions are not served names, so /v2/models/stats leaves them out; the data plane has them
    stats = app.dataplane.statistics.document([("g", 1), ("scaler", 1), ("guard", 1)])["model_stats"]
    executed = {(s["name"], s["version"]): s["execution_count"] for s in stats}
    assert executed[("g", "1")] == 1 and executed[("scaler", "1")] >= 3 and executed[("guard", "1")] == 1


class Recorder:
    def __init__(self) -> None:
        self.events: list[PredictionEvent] = []

    def observe(self, events: Sequence[PredictionEvent]) -> None:
        self.events.extend(events)

    def flush(self) -> None:
        pass


@pytest.mark.parametrize("batching", [False, True])
async def test_step_predictions_reach_the_observers_under_the_graph_prediction_id_unless_batched(
        registry: tuple[Path, Registry], batching: bool) -> None:
    home, reg = registry
    recorder = Recorder()
    s = Settings(home=home, workers=1, alias_refresh_seconds=0, async_broker="", batching=batching,
                 batch_max_size=8)
    server = build_server(s, ["g"], registry=reg, observers=[recorder])
    async with started(server):
        async with client(server) as c:
            r = await c.post("/v1/models/g:predict", json={"instances": X.head(3).to_dict(orient="records")})
        assert r.status_code == 200, r.text
        pid = r.headers["x-prediction-id"]
        server.dataplane.observers.drain()
    by_id = {e.context.prediction_id: e for e in recorder.events}
    steps = {k: (e.model, e.route, e.rows) for k, e in by_id.items() if k != pid}
    assert by_id[pid].model == "g"
    if batching:  # a merged call answers several requests: no step is attributed to one of them
        assert steps == {}
    else:
        assert steps == {f"{pid}.check": ("guard", "g/check", 3), f"{pid}.scale": ("scaler", "g/scale", 3),
                         f"{pid}.a": ("scaler", "g/a", 3), f"{pid}.b": ("scaler", "g/b", 3)}
        assert by_id[f"{pid}.check"].context.request_id == by_id[pid].context.request_id


def test_a_step_prediction_id_fits_the_log_key() -> None:
    pid = "0" * 32
    assert step_prediction_id(pid, "scale") == pid + ".scale"
    long = step_prediction_id(pid, "s" * 100)
    assert len(long) <= 64 and long.startswith(pid + ".") and long != step_prediction_id(pid, "s" * 99)
