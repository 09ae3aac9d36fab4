"""Drift inside a real ``shipyard serve``: reference-like traffic, then shifted traffic; the gauge rises,
the alert fires once, its webhook and its retraining command each run once.

The model is registered with its training data, so its version carries a reference
profile. The server's windows are 2 s long (``monitoring.drift.window_seconds``) so the
test sees several of them; traffic goes over loopback HTTP, bounded in count. The webhook
is a real HTTP listener on 127.0.0.1; the trigger command appends what it is sent to a file.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sklearn.linear_model import LogisticRegression

from shipyard.config import Settings
from shipyard.monitoring.alerts import AlertStore
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


class Webhook:
    """A real HTTP listener that keeps every JSON body POSTed to it."""

    def __init__(self) -> None:
        self.bodies: list[dict] = []
        received = self.bodies

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
                received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}/alert"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.http.shutdown()
        self.http.server_close()


@pytest.fixture(scope="module")
def webhook() -> Iterator[Webhook]:
    hook = Webhook()
    yield hook
    hook.close()


@pytest.fixture(scope="module")
def triggered(home: Path) -> Path:
    return home.parent / "retrain-runs.jsonl"


@pytest.fixture(scope="module")
def server(home: Path, webhook: Webhook, triggered: Path) -> Iterator[RunningServer]:
    append = f"import sys; open({str(triggered)!r}, 'a').write(sys.stdin.read().replace(chr(10), ' ') + chr(10))"
    config = home.parent / "shipyard.yaml"
    config.write_text(json.dumps({"monitoring": {
        "drift": {"window_seconds": WINDOW_SECONDS, "min_rows": 200},
        "alerts": {
            "evaluate_seconds": 0.5,
            "rules": [{"name": "f0-moved", "model": "m", "signal": "feature_effect", "feature": "f0", "above": 0.5,
                       "notify": ["ops", "retrain"]}],
            "notifiers": [{"name": "ops", "kind": "webhook", "url": webhook.url, "timeout_seconds": 5},
                          {"name": "retrain", "kind": "command", "command": [sys.executable, "-c", append]}],
        },
    }}))  # JSON is YAML
    with run_server(home, ["m@champion"], env={"SHIPYARD_CONFIG": str(config)}) as running:
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
            elif sample.name == "shipyard_drift_alert":
                found[(sample.name, sample.labels["rule"])] = sample.value
    return found


def wait_for(check, what: str, timeout: float = 40.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


def test_shifted_traffic_raises_the_gauge_and_fires_the_alert_once(
    home: Path, server: RunningServer, webhook: Webhook, triggered: Path
) -> None:
    rng = np.random.default_rng(1)
    with httpx.Client(timeout=10) as client:
        # reference-like traffic: windows are compared, nothing drifts, nothing fires
        def compared() -> dict[tuple[str, str], float]:
            send(client, server.url, frame(rng, 400))
            return {k: v for k, v in drift_series(client, server.url).items() if k[0] == "shipyard_drift_detected"}

        calm = wait_for(compared, "a first compared window")
        assert not any(calm.values()), calm
        assert webhook.bodies == []

        # f0 moves by one standard deviation: its gauge rises, the others stay put
        def drifted() -> dict[tuple[str, str], float] | None:
            send(client, server.url, frame(rng, 400, shift=1.0))
            series = drift_series(client, server.url)
            return series if series.get(("shipyard_drift_detected", "f0")) == 1.0 else None

        wait_for(drifted, "f0 to drift")

        # the first drifted window may still hold calm rows sent before the shift (a busy machine
        # answers across a window's end); a window of shifted rows only scores about 1 reference
        # standard deviation
        def shifted_only() -> dict[tuple[str, str], float] | None:
            series = drifted()
            return series if series is not None and series[("shipyard_drift_score", "f0")] > 0.5 else None

        series = wait_for(shifted_only, "a window of shifted rows only")
        assert all(series[("shipyard_drift_detected", f)] == 0.0 for f in FEATURES[1:]), series

        # the incident opens once; the shift goes on for several more windows and nothing fires again
        wait_for(lambda: webhook.bodies and triggered.exists(), "the webhook and the trigger")
        for _ in range(3):
            send(client, server.url, frame(rng, 400, shift=1.0))
            time.sleep(WINDOW_SECONDS)
        assert wait_for(lambda: drift_series(client, server.url).get(("shipyard_drift_alert", "f0-moved")) == 1.0,
                        "the alert gauge")

        # the same reports over REST
        answer = client.get(f"{server.url}/v1/models/m/drift", params={"limit": 50})
        assert answer.status_code == 200, answer.text
        reports = answer.json()["reports"]
        assert {(r["version"], r["arm"]) for r in reports} == {(1, "champion")}
        assert any(f["feature"] == "f0" and f["drifted"] for r in reports for f in r["report"]["features"])
        assert client.get(f"{server.url}/v1/models/other/drift").status_code == 404
        assert client.get(f"{server.url}/v1/models/m/drift", params={"limit": "0"}).status_code == 400

    assert len(webhook.bodies) == 1, webhook.bodies
    (body,) = webhook.bodies
    assert body["rule"] == "f0-moved" and body["model"] == "m" and body["state"] == "firing"
    assert "f0" in json.dumps(body["evidence"])
    runs = triggered.read_text().splitlines()
    assert len(runs) == 1 and json.loads(runs[0])["rule"] == "f0-moved"

    reg = Registry.from_settings(Settings(home=home))
    try:
        reports = latest_results(reg.database, model="m", limit_per_arm=100)
        incidents = AlertStore(reg.database).list(open_only=False)
    finally:
        reg.close()
    assert [(i.rule, i.model, i.state) for i in incidents] == [("f0-moved", "m", "firing")]
    newest = reports[0]["payload"]
    f0 = next(f for f in newest["features"] if f["feature"] == "f0")
    assert f0["drifted"] and f0["n"] >= 200
