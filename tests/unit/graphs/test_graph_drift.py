"""Drift per step: a step version with a reference profile gets its own drift reports from graph traffic."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from tests.fixtures.graph_steps import FEATURES, Scale

from shipyard.config import Settings
from shipyard.graphs import Graph, Node
from shipyard.monitoring.drift_monitor import GRACE_SECONDS, DriftMonitor, latest_results
from shipyard.registry import Registry
from shipyard.serving.server import Server, build_server, started

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def raw(rows: int, seed: int, shift: float = 0.0) -> pd.DataFrame:
    x = np.random.default_rng(seed).normal(5.0, 2.0, size=(rows, len(FEATURES)))
    x[:, 0] += shift
    return pd.DataFrame(x, columns=FEATURES)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Registry]]:
    from sklearn.linear_model import LogisticRegression

    home = tmp_path_factory.mktemp("graph-drift") / "home"
    train = pd.DataFrame(Scale().process(raw(2000, 0)))
    lr = LogisticRegression().fit(train, (train["x0"] + train["x1"] > 0).astype(int))
    reg = Registry.from_settings(Settings(home=home))
    try:
        reg.register(Scale(), "scaler", sample=raw(50, 1))
        reg.register(lr, "lr", sample=train.head(20), training_data=train)  # its reference profile
        reg.register(Graph(["scaler:1", Node("model", "lr:1")]), "g")
        yield home, reg
    finally:
        reg.close()


@pytest.fixture
async def server(registry: tuple[Path, Registry]) -> AsyncIterator[Server]:
    home, reg = registry
    server = build_server(Settings(home=home, workers=1, alias_refresh_seconds=0, async_broker=""), ["g"],
                          registry=reg)
    async with started(server):
        yield server


async def test_a_profiled_step_gets_a_drift_report_of_the_traffic_sent_through_the_graph(
        server: Server, registry: tuple[Path, Registry]) -> None:
    _, reg = registry
    [monitor] = [s for s in server.services.services if isinstance(s, DriftMonitor)]
    shifted = raw(600, 2, shift=4.0)  # x0 moves by two standard deviations; the other features stay
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=server.app), base_url="http://shipyard.test") as c:
        for start in range(0, len(shifted), 200):
            r = await c.post("/v1/models/g:predict",
                             json={"instances": shifted.iloc[start:start + 200].to_dict(orient="records")})
            assert r.status_code == 200, r.text
        assert server.dataplane.observers is not None
        server.dataplane.observers.drain()  # every step event delivered to the drift recorder
        real = monitor.clock
        monitor.clock = lambda: real() + monitor.config.window_seconds + GRACE_SECONDS + 1  # the window closed
        monitor.write_windows()
        assert len(monitor.compare_closed()) == 2  # both steps' versions have a reference profile
        found = {r["model"]: r for r in latest_results(reg.database)}
        assert sorted(found) == ["lr", "scaler"]  # the graph itself has none
        for model, step in (("lr", "model"), ("scaler", "scaler")):
            row = found[model]
            assert (row["version"], row["arm"], row["rows"], row["drifted"]) == (1, f"g/{step}", 600, False)
            # x0 moved; one feature of four is under the dataset's drift share
            assert {f["feature"] for f in row["payload"]["features"] if f["drifted"]} == {"x0"}, row["payload"]
        # served as a step of a graph, lr's reports are answered over REST although lr is not served by name
        answer = await c.get("/v1/models/lr/drift")
        assert answer.status_code == 200, answer.text
        assert [(r["version"], r["arm"], r["rows"]) for r in answer.json()["reports"]] == [(1, "g/model", 600)]
        scaler = await c.get("/v1/models/scaler/drift")
        assert [(r["arm"], r["rows"]) for r in scaler.json()["reports"]] == [("g/scaler", 600)]
        assert (await c.get("/v1/models/other/drift")).status_code == 404
