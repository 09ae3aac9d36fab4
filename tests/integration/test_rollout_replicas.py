"""Traffic policies across replicas: two `shipyard serve` processes on one PostgreSQL registry, driven by the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest
from sklearn.linear_model import LogisticRegression

from shipyard.config import Settings
from shipyard.demo import FEATURES, register_demo, train_demo_model
from shipyard.registry import Registry
from shipyard.testing import RunningServer, run_server

pytestmark = pytest.mark.integration

ROW = {"sepal_length": 6.0, "sepal_width": 2.9, "petal_length": 4.5, "petal_width": 1.5}
USERS = [f"user-{i}" for i in range(60)]


@pytest.fixture
def fleet(tmp_path: Path, pg_database_url: str) -> Iterator[dict[str, str]]:
    """The registry both replicas share: demo v1 is champion, a LogisticRegression v2 is challenger."""
    env = {"SHIPYARD_REGISTRY_URL": pg_database_url, "SHIPYARD_ARTIFACTS": str(tmp_path / "artifacts"),
           "SHIPYARD_ALIAS_REFRESH_SECONDS": "0.5", "SHIPYARD_ASYNC_BROKER": "off"}
    registry = Registry.from_settings(Settings(home=tmp_path / "setup", registry_url=pg_database_url,
                                               artifacts=env["SHIPYARD_ARTIFACTS"]))
    try:
        register_demo(registry)
        _, X, _ = train_demo_model()
        y = (X["petal_length"] > 4.0).astype(int)
        registry.register(LogisticRegression().fit(X, y), "demo", sample=X.head(5), alias="challenger")
    finally:
        registry.close()
    yield env


def cli(env: dict[str, str], home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "shipyard", *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **env, "SHIPYARD_HOME": str(home)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def arms(server: RunningServer, users: list[str]) -> dict[str, str]:
    """The version each user's request is answered by."""
    out = {}
    with httpx.Client(base_url=server.url, timeout=30) as c:
        for user in users:
            r = c.post("/v2/models/demo/infer", headers={"X-User": user}, json={"inputs": [
                {"name": f, "datatype": "FP64", "shape": [1], "data": [ROW[f]]} for f in FEATURES]})
            assert r.status_code == 200, r.text
            out[user] = r.json()["model_version"]
    return out


def eventually(check: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"not within {timeout:.0f}s: {what}"
        time.sleep(0.2)


def test_replicas_share_one_policy_sticky_monotone_and_across_a_restart(
    fleet: dict[str, str], tmp_path: Path,
) -> None:
    homes = [tmp_path / "a", tmp_path / "b"]
    cli(fleet, homes[0], "rollout", "start", "demo", "--split", "champion=80,challenger=20",
        "--sticky", "header:x-user")
    with ExitStack() as stack:
        # replica a is 2 server processes (3 holders of one lease, sharing the policy), b is one
        a = stack.enter_context(run_server(homes[0], ["demo@champion"], env=fleet, args=["--workers", "2"]))
        b = stack.enter_context(run_server(homes[1], ["demo@champion"], env=fleet, args=["--workers", "1"]))
        first = arms(a, USERS)
        assert arms(b, USERS) == first  # the same key, the same arm, on every replica
        assert set(first.values()) == {"1", "2"}
        before = {u for u, v in first.items() if v == "2"}

        cli(fleet, homes[0], "rollout", "start", "demo", "--split", "champion=50,challenger=50",
            "--sticky", "header:x-user", "--reason", "ramp")
        eventually(lambda: len([v for v in arms(a, USERS).values() if v == "2"]) > len(before)
                   and arms(b, USERS) == arms(a, USERS), "both replicas on the 50/50 split")
        after = arms(a, USERS)
        assert all(after[u] == "2" for u in before)  # raising the arm moved nobody out of it

    # a restarted replica routes every user as before
    with run_server(homes[0], ["demo@champion"], env=fleet, args=["--workers", "1"]) as again:
        assert arms(again, USERS) == after
        status = json.loads(cli(fleet, homes[0], "rollout", "status", "demo", "--json").stdout)
        assert status["policy"]["revision"] == 2 and [h["reason"] for h in status["history"]] == ["started", "ramp"]

        cli(fleet, homes[0], "rollout", "abort", "demo", "--reason", "enough")
        eventually(lambda: set(arms(again, USERS[:20]).values()) == {"1"}, "all traffic back on champion")
