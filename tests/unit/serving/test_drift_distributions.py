"""``GET /v1/models/{name}/drift/distributions``: the reference's and one window's shares per bin.

A real server in-process (drift on, a model registered with its training data, so its version
has a reference profile). Traffic goes through the REST app; a second replica's window of the
same period is written to the windows table as that replica would. The expected counts are
computed here from the rows themselves with the profile's edges (a bin ``i`` is
``(edges[i-1], edges[i]]``), not read back from the profile or the window.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from shipyard.config import Settings
from shipyard.monitoring.drift.window import Window
from shipyard.monitoring.drift_monitor import DriftMonitor
from shipyard.monitoring.tables import drift_windows_t
from shipyard.registry import Registry
from shipyard.serving.server import Server, build_server, started

pytestmark = pytest.mark.anyio

FEATURES = ["f0", "f1", "f2"]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def frame(rows: int, seed: int, shift: float = 0.0) -> pd.DataFrame:
    x = np.random.default_rng(seed).normal(size=(rows, len(FEATURES)))
    x[:, 0] += shift
    return pd.DataFrame(x, columns=FEATURES)


TRAIN = frame(3000, 0)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Registry]]:
    from sklearn.linear_model import LogisticRegression

    home = tmp_path_factory.mktemp("drift-dist") / "home"
    reg = Registry.from_settings(Settings(home=home))
    try:
        model = LogisticRegression().fit(TRAIN, (TRAIN["f0"] + TRAIN["f1"] > 0).astype(int))
        reg.register(model, "m", sample=TRAIN.head(5), training_data=TRAIN, alias="champion")
        reg.register(model, "m", sample=TRAIN.head(5))  # version 2: no reference profile
        yield home, reg
    finally:
        reg.close()


@pytest.fixture
async def server(registry: tuple[Path, Registry]) -> AsyncIterator[Server]:
    home, reg = registry
    settings = Settings(home=home, workers=1, alias_refresh_seconds=0, async_broker="")
    server = build_server(settings, ["m@champion"], registry=reg)
    async with started(server):
        yield server


def expected(edges: list[float], values: np.ndarray) -> list[int]:
    bins = np.searchsorted(np.asarray(edges), values, side="left")
    return np.bincount(bins, minlength=len(edges) + 1).tolist()


async def test_the_shares_are_the_reference_and_the_summed_replicas_counts(
        server: Server, registry: tuple[Path, Registry]) -> None:
    _, reg = registry
    [monitor] = [s for s in server.services.services if isinstance(s, DriftMonitor)]
    sent = frame(400, 1, shift=1.5)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=server.app), base_url="http://shipyard.test") as c:
        none_yet = await c.get("/v1/models/m/drift/distributions")
        assert none_yet.status_code == 404 and "no drift window" in none_yet.json()["error"], none_yet.text
        for start in range(0, len(sent), 100):
            r = await c.post("/v1/models/m:predict",
                             json={"instances": sent.iloc[start:start + 100].to_dict(orient="records")})
            assert r.status_code == 200, r.text
        assert server.dataplane.observers is not None
        server.dataplane.observers.drain()
        assert monitor.write_windows() == 1

        # another replica counted other rows of the same period
        with reg.database.connect() as conn:
            (arm, period), = conn.execute(sa.select(drift_windows_t.c.arm, drift_windows_t.c.start)).all()
        other_rows = frame(150, 2, shift=-0.5)
        profile = monitor.profiles("m", 1)
        assert profile is not None
        other = Window(profile)
        other.add({f: other_rows[f].to_numpy() for f in FEATURES})
        with reg.database.transaction() as conn:
            conn.execute(drift_windows_t.insert().values(model="m", version=1, arm=arm, start=period,
                                                         replica="elsewhere:1", rows=other.rows,
                                                         payload=other.to_dict(), updated_at=time.time()))

        answer = await c.get("/v1/models/m/drift/distributions")
        assert answer.status_code == 200, answer.text
        doc = answer.json()
        assert (doc["version"], doc["arms"], doc["start"], doc["rows"]) == (1, [arm], period, 550)
        assert doc["end"] == period + int(monitor.config.window_seconds)
        inputs = {f["feature"]: f for f in doc["features"] if f["side"] == "input"}
        assert sorted(inputs) == FEATURES
        for name in FEATURES:
            f = inputs[name]
            edges = f["edges"]
            assert len(f["labels"]) == len(edges) + 1 and f["labels"][0].startswith("<= ")
            reference = expected(edges, TRAIN[name].to_numpy())
            current = expected(edges, np.concatenate([sent[name].to_numpy(), other_rows[name].to_numpy()]))
            assert f["reference"]["counts"] == reference and f["reference"]["rows"] == len(TRAIN)
            assert f["current"]["counts"] == current and f["current"]["rows"] == 550
            assert f["reference"]["shares"] == pytest.approx([c / len(TRAIN) for c in reference], abs=1e-6)
            assert f["current"]["shares"] == pytest.approx([c / 550 for c in current], abs=1e-6)
        # f0 moved by 1.5 standard deviations: its top reference bins hold far more of the window
        top = slice(len(inputs["f0"]["edges"]) // 2, None)
        assert sum(inputs["f0"]["current"]["shares"][top]) > sum(inputs["f0"]["reference"]["shares"][top]) + 0.2

        same = await c.get("/v1/models/m/drift/distributions", params={"version": "1", "start": str(period),
                                                                       "arm": arm})
        assert same.json()["features"] == doc["features"]
        unknown = await c.get("/v1/models/other/drift/distributions")
        assert unknown.status_code == 404 and "other" in unknown.json()["error"]
        bare = await c.get("/v1/models/m/drift/distributions", params={"version": "2"})
        assert bare.status_code == 404 and "no reference profile" in bare.json()["error"], bare.text
        later = await c.get("/v1/models/m/drift/distributions", params={"start": str(period + 3600)})
        assert later.status_code == 404 and f"start {period + 3600}" in later.json()["error"]
        bad = await c.get("/v1/models/m/drift/distributions", params={"start": "soon"})
        assert bad.status_code == 400 and "start" in bad.json()["error"]
