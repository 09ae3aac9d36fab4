"""Drift inside a real ``shipyard serve``: reference-like traffic, then shifted traffic, seen on /metrics.

The model is registered with its training data, so its version carries a reference
profile. The server's windows are 2 s long (``monitoring.drift.window_seconds``) so the
test sees several of them; traffic goes over loopback HTTP, bounded in count.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sklearn.linear_model import LogisticRegression

from shipyard.config import Settings
from shipyard.monitoring.drift_monitor import latest_results
from shipyard.registry import Registry
from shipyard.testing import RunningServer, run_server

pytestmark = pytest.mark.integration

FEATURES = [f"f{i}" for i in range(5)]
WINDOW_SECONDS = 2.0


def frame(rng: np.random.Generator, rows: int, shift: float = 0.0) -> pd.DataFrame:
    x = rng.normal(size=(rows, len(FEATURES)))
    x[:, 0] += shift  # only f0 moves
    return pd.DataFrame(x, columns=FEATURES)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("drift") / "home"
    reg = Registry.from_settings(Settings(home=home))
    try:
        train = frame(np.random.default_rng(0), 5_000)
        model = LogisticRegression().fit(train, (train["f0"] + train["f1"] > 0).astype(int))
        reg.register(model, "m", sample=train.head(5), training_data=train, alias="champion")
    finally:
        reg.close()
    return home


@pytest.fixture(scope="module")
def server(home: Path) -> Iterator[RunningServer]:
    env = {"SHIPYARD_MONITORING__DRIFT__WINDOW_SECONDS": str(WINDOW_SECONDS),
           "SHIPYARD_MONITORING__DRIFT__MIN_ROWS": "200"}
    with run_server(home, ["m@champion"], env=env) as running:
        yield running


def send(client: httpx.Client, url: str, data: pd.DataFrame, *, batch: int = 50) -> None:
    for start in range(0, len(data), batch):
        records = data.iloc[start:start + batch].to_dict(orient="records")
        response = client.post(f"{url}/v1/models/m:predict", json={"instances": records})
        assert response.status_code == 200, response.text


def drift_series(client: httpx.Client, url: str) -> dict[tuple[str, str], float]:
    """(series name, feature) -> value of the drift gauges on /metrics."""
    found = {}
    for family in text_string_to_metric_families(client.get(f"{url}/metrics").text):
        for sample in family.samples:
            if sample.name in ("shipyard_drift_score", "shipyard_drift_detected"):
                found[(sample.name, sample.labels["feature"])] = sample.value
    return found


def wait_for(check, what: str, timeout: float = 40.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


def test_shifted_traffic_raises_the_drift_gauge_of_the_shifted_feature_only(home: Path, server: RunningServer) -> None:
    rng = np.random.default_rng(1)
    with httpx.Client(timeout=10) as client:
        # reference-like traffic: windows are compared, nothing drifts
        def compared() -> dict[tuple[str, str], float]:
            send(client, server.url, frame(rng, 400))
            return {k: v for k, v in drift_series(client, server.url).items() if k[0] == "shipyard_drift_detected"}

        calm = wait_for(compared, "a first compared window")
        assert not any(calm.values()), calm

        # f0 moves by one standard deviation: its gauge rises, the others stay put
        def drifted() -> dict[tuple[str, str], float] | None:
            send(client, server.url, frame(rng, 400, shift=1.0))
            series = drift_series(client, server.url)
            return series if series.get(("shipyard_drift_detected", "f0")) == 1.0 else None

        series = wait_for(drifted, "f0 to drift")
        assert series[("shipyard_drift_score", "f0")] > 0.5  # about 1 reference standard deviation
        assert all(series[("shipyard_drift_detected", f)] == 0.0 for f in FEATURES[1:]), series

    reg = Registry.from_settings(Settings(home=home))
    try:
        reports = latest_results(reg.database, model="m", limit_per_arm=100)
    finally:
        reg.close()
    assert reports, "the reports are kept in the registry database"
    newest = reports[0]["payload"]
    f0 = next(f for f in newest["features"] if f["feature"] == "f0")
    assert f0["drifted"] and f0["n"] >= 200
