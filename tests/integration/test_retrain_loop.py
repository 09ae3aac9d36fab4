"""Closed-loop retraining against a real ``shipyard serve``: shifted traffic, delayed labels, a retrain by hand.

The champion learned ``f0 + f1 > 0``; the traffic it then serves follows ``f0 - f1 > 0``, and
labels come back through ``POST /v1/feedback``. ``shipyard retrain`` (a real CLI process)
assembles the window from the server's prediction log and the labels, trains in its own
process, gates the candidate on the newest labelled rows and moves the alias only when it wins.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression

from shipyard.config import Settings
from shipyard.registry import Registry
from shipyard.retraining.store import RunStore
from shipyard.testing import RunningServer, run_server

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FEATURES = ["f0", "f1", "f2"]

TRAINING = '''
import numpy as np
from sklearn.dummy import DummyClassifier
from sklearn.linear_model import LogisticRegression


def train(data):
    return LogisticRegression().fit(data.frame()[data.features], data.y)


def worse(data):
    return DummyClassifier(strategy="constant", constant=0).fit(data.X, data.y)


def broken(data):
    raise RuntimeError("the feature store is down")


def slow(data):
    import time
    time.sleep(600)


def greedy(data):
    hog = np.ones((4096, 1024, 1024), dtype=np.uint8)  # 4 GiB
    return hog
'''


def frame(rng: np.random.Generator, rows: int) -> pd.DataFrame:
    return pd.DataFrame(rng.normal(size=(rows, len(FEATURES))), columns=FEATURES)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("retrain") / "home"
    reg = Registry.from_settings(Settings(home=home))
    try:
        train = frame(np.random.default_rng(0), 2_000)
        model = LogisticRegression().fit(train, (train["f0"] + train["f1"] > 0).astype(int))
        old = frame(np.random.default_rng(7), 300)  # the original data: what reference_share draws from
        reg.register(model, "m", sample=train.head(5), alias="champion", tags={"train": "training:train"},
                     holdout=(old, (old["f0"] + old["f1"] > 0).astype(int).to_numpy()))
    finally:
        reg.close()
    (home.parent / "training.py").write_text(TRAINING)
    return home


@pytest.fixture(scope="module")
def server(home: Path) -> Iterator[RunningServer]:
    env = {"SHIPYARD_MONITORING__PREDICTION_LOG__ENABLED": "true",
           "SHIPYARD_MONITORING__FEEDBACK__ENABLED": "true"}
    with run_server(home, ["m@champion"], env=env) as running:
        yield running


def shifted_traffic_with_labels(url: str, rows: int, seed: int) -> float:
    """Send ``rows`` shifted rows in batches, then their true labels; the champion's realized accuracy."""
    rng = np.random.default_rng(seed)
    data = frame(rng, rows)
    truth = (data["f0"] - data["f1"] > 0).astype(int).to_numpy()
    right = 0
    with httpx.Client(timeout=30) as client:
        for start in range(0, rows, 50):
            rid = uuid.uuid4().hex
            part = data.iloc[start:start + 50]
            answer = client.post(f"{url}/v1/models/m:predict", json={"instances": part.to_dict(orient="records")},
                                 headers={"x-request-id": rid})
            assert answer.status_code == 200, answer.text
            predicted = [p if not isinstance(p, dict) else next(iter(p.values())) for p in answer.json()["predictions"]]
            labels = truth[start:start + 50]
            right += int(sum(int(p) == int(y) for p, y in zip(predicted, labels, strict=True)))
            items = [{"request_id": rid, "row": i, "label": int(y)} for i, y in enumerate(labels)]
            fed = client.post(f"{url}/v1/feedback", json={"feedback": items})
            assert fed.status_code == 200, fed.text
    return right / rows


def retrain(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "shipyard", "--home", str(home), "retrain", *args],
                          capture_output=True, text=True, cwd=home.parent, timeout=300)


@pytest.fixture(scope="module")
def served(server: RunningServer) -> float:
    return shifted_traffic_with_labels(server.url, 1_000, seed=1)


def aliases(home: Path) -> dict[str, int]:
    reg = Registry.from_settings(Settings(home=home))
    try:
        return reg.aliases("m")
    finally:
        reg.close()


def test_dry_run_shows_the_window_and_changes_nothing(home: Path, served: float, tmp_path: Path) -> None:
    assert served < 0.85  # the concept moved: the champion is wrong on a good share of rows
    done = retrain(home, "m", "--dry-run", "--json", "--out", str(tmp_path / "ds"))
    assert done.returncode == 0, done.stderr
    manifest = json.loads(done.stdout)["manifest"]
    assert manifest["counts"]["labelled"] == 1_000
    assert manifest["counts"]["train"] + manifest["counts"]["holdout"] == 1_000
    assert (tmp_path / "ds" / "train.parquet").exists() and (tmp_path / "ds" / "manifest.json").exists()
    assert json.loads((tmp_path / "ds" / "manifest.json").read_text())["fingerprint"] == manifest["fingerprint"]
    reg = Registry.from_settings(Settings(home=home))
    try:
        assert RunStore(reg.database).list("m") == []
    finally:
        reg.close()


def test_per_class_sampling_and_reference_rows_shape_the_training_set(home: Path, served: float,
                                                                      tmp_path: Path) -> None:
    config = tmp_path / "shipyard.yaml"
    config.write_text(json.dumps({"models": [{"ref": "m@champion", "retraining": {
        "per_class": 100, "reference_share": 0.5, "holdout_share": 0.1, "label_delay": "0s"}}]}))
    done = retrain(home, "m", "--config", str(config), "--dry-run", "--json")
    assert done.returncode == 0, done.stderr
    manifest = json.loads(done.stdout)["manifest"]
    counts = manifest["counts"]
    assert counts["holdout"] == 100 and counts["reference"] == 200  # as many reference rows as sampled ones
    assert counts["train"] == 400 and sum(manifest["classes"].values()) == 400
    import pyarrow.parquet as pq

    train = pq.read_table(Path(json.loads(done.stdout)["folder"]) / "train.parquet").to_pandas()
    assert list(train.columns) == [*FEATURES, "label"] and len(train) == 400


def test_a_worse_candidate_is_rejected_and_the_alias_never_moves(home: Path, served: float) -> None:
    before = aliases(home)["champion"]
    done = retrain(home, "m", "--train", "training:worse", "--no-canary", "--json")
    assert done.returncode == 0, done.stderr
    run = json.loads(done.stdout[done.stdout.index("{"):])
    assert run["state"] == "rejected" and "holdout" in run["reason"]
    assert run["candidate_version"] is not None and run["candidate_version"] != before
    assert aliases(home)["champion"] == before


@pytest.mark.parametrize(("function", "timeout", "expected"), [
    ("training:broken", 120, "RuntimeError: the feature store is down"),
    ("training:greedy", 120, "out of memory: limits.memory_mb is 1536"),
    ("training:slow", 3, "training timed out after 3s"),
])
def test_a_failing_training_function_fails_the_run_and_the_server_serves_on(
        home: Path, server: RunningServer, served: float, function: str, timeout: int, expected: str,
        tmp_path: Path) -> None:
    config = tmp_path / "shipyard.yaml"
    config.write_text(json.dumps({"models": [{"ref": "m@champion", "retraining": {
        "limits": {"memory_mb": 1536, "timeout_seconds": timeout}}}]}))
    done = retrain(home, "m", "--config", str(config), "--train", function, "--no-canary", "--json")
    assert done.returncode == 1
    run = json.loads(done.stdout[done.stdout.index("{"):])
    assert run["state"] == "failed" and run["candidate_version"] is None
    assert expected in run["log"]
    assert httpx.get(f"{server.url}/v2/health/ready").status_code == 200
    answer = httpx.post(f"{server.url}/v1/models/m:predict", json={"instances": [{"f0": 1.0, "f1": 0.0, "f2": 0.0}]})
    assert answer.status_code == 200


def test_a_better_candidate_is_promoted_with_its_lineage(home: Path, server: RunningServer, served: float) -> None:
    before = aliases(home)["champion"]
    done = retrain(home, "m", "--no-canary", "--json")  # the function comes from the version's train tag
    assert done.returncode == 0, done.stdout + done.stderr
    run = json.loads(done.stdout[done.stdout.index("{"):])
    assert run["state"] == "promoted", run["log"]
    assert aliases(home)["champion"] == run["candidate_version"] != before
    reg = Registry.from_settings(Settings(home=home))
    try:
        lineage = reg.get(f"m:{run['candidate_version']}").lineage
    finally:
        reg.close()
    assert lineage["parent"] == f"m:{before}"
    assert lineage["retraining"]["run"] == run["id"]
    assert lineage["retraining"]["function"] == "training:train"
    assert lineage["retraining"]["rows"] == run["dataset"]["counts"]["train"]
    assert lineage["retraining"]["fingerprint"] == run["dataset"]["fingerprint"]
    assert lineage["retraining"]["code_digest"].startswith("sha256:")
    history = retrain(home, "history", "m", "--json")
    states = [r["state"] for r in json.loads(history.stdout)["runs"]]
    assert states[0] == "promoted" and "rejected" in states and states.count("failed") >= 3



def test_stopping_the_retrainer_kills_training_and_fails_the_run(
        home: Path, served: float, monkeypatch: pytest.MonkeyPatch) -> None:
    import threading
    import time

    from shipyard.retraining.runner import Retrainer
    from shipyard.retraining.spec import RetrainSpec

    monkeypatch.chdir(home.parent)  # where the training module is, as for a server started there
    reg = Registry.from_settings(Settings(home=home))
    try:
        retrainer = Retrainer(reg, Settings(home=home))
        spec = RetrainSpec.parse({"train": "training:slow", "canary": False})
        run = retrainer.create("m", spec)
        done: list[object] = []
        worker = threading.Thread(target=lambda: done.append(retrainer.execute(run, spec)))
        worker.start()
        deadline = time.monotonic() + 60
        while not retrainer._procs and time.monotonic() < deadline:
            time.sleep(0.05)
        retrainer.stop()
        worker.join(30)
        final = retrainer.store.get(run.id)
    finally:
        reg.close()
    assert final.state == "failed" and "stopping" in (final.reason or "")
