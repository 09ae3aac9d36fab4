"""The whole loop in a real ``shipyard serve``: accuracy drops, the alert fires once, a retrain runs on the
labelled recent window, the candidate wins the holdout gate, the canary promotes it, accuracy recovers.

The champion learned ``f0 + f1 > 0`` (registered accuracy 0.97); the traffic then follows
``f0 - f1 > 0``, and labels come back through ``POST /v1/feedback`` with the time they were
observed, a minute after each prediction (``label_delay`` is 5 s: rows newer than that wait).
The server evaluates the alert rule, starts the retraining run under its lease, trains in a
separate process, gates, hands the candidate to a canary the rollout controller steps, and
reads the canary's outcome into the run; ``GET /v1/retrains`` shows it all along.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression

from shipyard.config import Settings
from shipyard.monitoring.alerts import AlertStore
from shipyard.registry import Registry
from shipyard.testing import RunningServer, run_server

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FEATURES = ["f0", "f1", "f2"]
TRAINING = '''
from sklearn.linear_model import LogisticRegression


def train(data):
    return LogisticRegression().fit(data.frame()[data.features], data.y)
'''


def frame(rng: np.random.Generator, rows: int) -> pd.DataFrame:
    return pd.DataFrame(rng.normal(size=(rows, len(FEATURES))), columns=FEATURES)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("retrain-loop") / "home"
    reg = Registry.from_settings(Settings(home=home))
    try:
        train = frame(np.random.default_rng(0), 2_000)
        model = LogisticRegression().fit(train, (train["f0"] + train["f1"] > 0).astype(int))
        # its holdout is the old concept's: the canary's promotion must judge on the run's recent window
        old = frame(np.random.default_rng(5), 300)
        reg.register(model, "m", sample=train.head(5), alias="champion", metrics={"accuracy": 0.97},
                     holdout=(old, (old["f0"] + old["f1"] > 0).astype(int).to_numpy()))
    finally:
        reg.close()
    (home.parent / "loop_training.py").write_text(TRAINING)
    return home


@pytest.fixture(scope="module")
def server(home: Path) -> Iterator[RunningServer]:
    config = home.parent / "shipyard.yaml"
    config.write_text(json.dumps({
        "rollout_tick_seconds": 0.5,
        "retrain_tick_seconds": 0.5,
        "models": [{"ref": "m@champion", "retraining": {
            "train": "loop_training:train", "last": "1d", "label_delay": "5s", "holdout_share": 0.3,
            "on_alerts": ["accuracy-drop"], "min_interval": "1h", "min_rows": 200,
            "canary": {"steps": [0.5, 1.0], "interval_seconds": 1,
                       "gates": {"min_units": 50, "max_step_seconds": 600, "max_latency_increase": 5.0}},
            "limits": {"memory_mb": 3072, "timeout_seconds": 120}}}],
        "monitoring": {
            "prediction_log": {"enabled": True},
            "feedback": {"enabled": True},
            "alerts": {"evaluate_seconds": 0.5, "realized_window_seconds": 86_400,
                       "rules": [{"name": "accuracy-drop", "model": "m", "signal": "realized_drop",
                                  "metric": "accuracy", "above": 0.1, "notify": ["log"]}]},
        },
    }))  # JSON is YAML
    env = {"SHIPYARD_CONFIG": str(config),
           "PYTHONPATH": os.pathsep.join([str(home.parent), os.environ.get("PYTHONPATH", "")])}
    with run_server(home, [], env=env) as running:
        yield running


def traffic(client: httpx.Client, url: str, rows: int, seed: int, *, labels: bool, batch: int = 50) -> float:
    """Shifted rows in batches (labels observed a minute later when ``labels``); the share answered right."""
    data = frame(np.random.default_rng(seed), rows)
    truth = (data["f0"] - data["f1"] > 0).astype(int).to_numpy()
    right = 0
    for start in range(0, rows, batch):
        rid = uuid.uuid4().hex
        answer = client.post(f"{url}/v1/models/m:predict",
                             json={"instances": data.iloc[start:start + batch].to_dict(orient="records")},
                             headers={"x-request-id": rid})
        assert answer.status_code == 200, answer.text
        got = [p if not isinstance(p, dict) else next(iter(p.values())) for p in answer.json()["predictions"]]
        want = truth[start:start + batch]
        right += int(sum(int(p) == int(y) for p, y in zip(got, want, strict=True)))
        if labels:
            observed = time.time() + 60
            items = [{"request_id": rid, "row": i, "label": int(y), "time": observed} for i, y in enumerate(want)]
            assert client.post(f"{url}/v1/feedback", json={"feedback": items}).status_code == 200
    return right / rows


def runs(client: httpx.Client, url: str) -> list[dict]:
    answer = client.get(f"{url}/v1/retrains", params={"model": "m"})
    assert answer.status_code == 200, answer.text
    return answer.json()["runs"]


def until(check: Callable[[], bool], what: str, timeout: float, between: Callable[[], object] = lambda: None) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        between()
        time.sleep(0.2)


def test_drift_alert_retrain_canary_promotion_and_recovery(home: Path, server: RunningServer) -> None:
    started = time.monotonic()
    with httpx.Client(timeout=30) as client:
        before = traffic(client, server.url, 1_000, seed=1, labels=True)
        assert before < 0.85  # the champion is wrong on a good share of the shifted traffic
        time.sleep(5)  # label_delay: the rows are now old enough to train on
        until(lambda: bool(runs(client, server.url)), "the alert to start a run", 60)
        until(lambda: runs(client, server.url)[0]["state"] in ("canary", "promoted", "rejected", "failed"),
              "the run to reach its canary", 180)
        run = runs(client, server.url)[0]
        print(f"{time.monotonic() - started:.0f}s: run {run['state']}")
        assert run["trigger"] == "alert" and run["evidence"]["rule"] == "accuracy-drop", run
        assert run["state"] in ("canary", "promoted"), run
        holdout = next(g for g in run["gates"]["results"] if g["name"] == "holdout")
        assert holdout["passed"] and not holdout["skipped"], holdout
        counts = run["dataset"]["counts"]
        assert counts["labelled"] + counts["too_recent"] == counts["rows"] + counts["too_recent"] <= 1_000
        assert counts["labelled"] >= 200 and counts["train"] + counts["holdout"] == counts["labelled"]

        # the canary needs traffic on both arms to decide; the server reads its outcome into the run
        seed = iter(range(100, 10_000))
        until(lambda: runs(client, server.url)[0]["state"] != "canary", "the canary to decide", 180,
              between=lambda: traffic(client, server.url, 40, seed=next(seed), labels=False, batch=1))
        run = runs(client, server.url)[0]
        assert run["state"] == "promoted", run

        reg = Registry.from_settings(Settings(home=home))
        try:
            assert reg.aliases("m")["champion"] == run["candidate_version"]
            incidents = AlertStore(reg.database).list(open_only=False, model="m")
        finally:
            reg.close()
        assert [i.rule for i in incidents] == ["accuracy-drop"]  # the alert fired once
        assert len(runs(client, server.url)) == 1  # and started one run
        time.sleep(1.5)  # alias_refresh: every arm serves the new champion
        after = traffic(client, server.url, 500, seed=99, labels=False)
    assert after > 0.95 > before
    print(f"{time.monotonic() - started:.0f}s: realized accuracy {before:.3f} before, {after:.3f} after "
          f"run {run['id']}")
