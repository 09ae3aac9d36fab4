"""The serving core on a real `shipyard serve` with worker processes: alias moves under load, the prediction log.

Load here is a bounded number of requests from a few client threads on loopback:
it checks correctness (no failure, every answer from the old or the new version),
never speed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
import pytest
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

from shipyard.config import Settings
from shipyard.demo import register_demo, train_demo_model
from shipyard.registry import Registry
from shipyard.testing import run_server

pytestmark = [pytest.mark.integration]

_, X, _ = train_demo_model()
Y = load_iris().target
ROWS = X.head(4).to_dict(orient="records")


@pytest.fixture
def two_versions(tmp_path: Path) -> Path:
    """demo:1 (the quickstart forest, alias champion) and demo:2 (a logistic regression)."""
    home = tmp_path / "home"
    registry = Registry.from_settings(Settings(home=home))
    try:
        register_demo(registry)
        registry.register(LogisticRegression(max_iter=500).fit(X, Y), "demo", sample=X)
    finally:
        registry.close()
    return home


def set_alias(home: Path, version: int) -> None:
    subprocess.run([sys.executable, "-m", "shipyard", "alias", "demo", "champion", str(version)],
                   env={**os.environ, "SHIPYARD_HOME": str(home)}, check=True, capture_output=True, timeout=60)


def test_alias_moves_under_load_with_workers_fail_no_request(two_versions: Path) -> None:
    env = {"SHIPYARD_ALIAS_REFRESH_SECONDS": "0.3", "SHIPYARD_ASYNC_BROKER": "off"}
    with run_server(two_versions, ["demo@champion"], args=["--workers", "2"], env=env) as server:
        deadline = time.monotonic() + 60  # ready answers come from the first worker; wait for the second too
        while "2 workers ready" not in server.log():
            assert time.monotonic() < deadline, server.log()
            time.sleep(0.05)
        versions: Counter[str] = Counter()
        failures: list[str] = []
        stop = threading.Event()

        def client() -> None:
            with httpx.Client(base_url=server.url, timeout=30) as c:
                while not stop.is_set():
                    r = c.post("/v1/models/demo:predict", json={"instances": ROWS})
                    if r.status_code != 200:
                        failures.append(f"{r.status_code} {r.text[:200]}")
                    else:
                        versions[r.json()["model_version"]] += 1

        threads = [threading.Thread(target=client) for _ in range(4)]
        for t in threads:
            t.start()
        try:
            time.sleep(1.0)
            set_alias(two_versions, 2)  # forward, then back, then forward again, all under load
            time.sleep(2.0)
            set_alias(two_versions, 1)
            time.sleep(2.0)
            set_alias(two_versions, 2)
            time.sleep(2.0)
        finally:
            stop.set()
            for t in threads:
                t.join(30)
        assert not failures, failures[:5]
        assert set(versions) == {"1", "2"} and sum(versions.values()) > 50, versions
        with httpx.Client(base_url=server.url, timeout=30) as c:  # settled on the last move
            assert c.post("/v1/models/demo:predict", json={"instances": ROWS}).json()["model_version"] == "2"
        log = server.log()
        # each worker (a whole server) switched after loading the new version, never on a request
        assert log.count("moved from version") == 6 and log.count("preloaded in") == 6, log[-3000:]
        assert "Traceback" not in log


def test_prediction_log_records_every_prediction_and_loses_none_on_sigterm(tmp_path: Path) -> None:
    home = tmp_path / "home"
    registry = Registry.from_settings(Settings(home=home))
    try:
        register_demo(registry)
    finally:
        registry.close()
    env = {"SHIPYARD_MONITORING__PREDICTION_LOG__ENABLED": "true",
           "SHIPYARD_MONITORING__PREDICTION_LOG__REDACT": "petal_width", "SHIPYARD_ASYNC_BROKER": "off"}
    sent: list[str] = []
    with run_server(home, ["demo@champion"], args=["--workers", "2"], env=env) as server, \
            httpx.Client(base_url=server.url, timeout=30) as c:
        for i in range(40):
            rid = f"req-{i}"
            assert c.post("/v1/models/demo:predict", json={"instances": ROWS},
                          headers={"x-request-id": rid}).status_code == 200
            sent.append(rid)
        assert c.post("/v1/models/demo:predict", json={"instances": [{"bogus": 1}]},
                      headers={"x-request-id": "bad"}).status_code == 400
    # the server is gone (SIGTERM): what it buffered was written before it exited
    done = subprocess.run([sys.executable, "-m", "shipyard", "logs", "demo", "--format", "jsonl", "--limit", "1000"],
                          env={**os.environ, "SHIPYARD_HOME": str(home)}, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["request_id"] for r in records] == [*sent, "bad"]
    assert len({r["prediction_id"] for r in records}) == 41
    ok = records[0]
    assert (ok["model"], ok["version"], ok["route"], ok["outcome"], ok["transport"]) == ("demo", 1, "champion", "ok",
                                                                                        "rest")
    assert ok["inputs"]["petal_width"] == "<redacted>"
    np.testing.assert_allclose(ok["inputs"]["sepal_length"], X["sepal_length"].head(4))
    assert len(ok["outputs"]["predict"]) == 4 and ok["latency_ms"] > 0
    assert records[-1]["outcome"] == "invalid_input" and records[-1]["outputs"] is None
