"""Retraining triggers on PostgreSQL: two replicas on one registry start one run per trigger, not two.

Each replica has its own ``Registry`` (its own connection pool) and ``RetrainService``; the
clock is simulated, so a cron tick and an alert incident are due at once for both.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression

from shipyard.config import Settings
from shipyard.monitoring.alerts import AlertStore
from shipyard.registry import Registry
from shipyard.retraining.service import RetrainService
from shipyard.retraining.spec import RetrainSpec
from shipyard.retraining.store import RunStore

pytestmark = pytest.mark.integration


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def registries(pg_database_url: str, tmp_path: Path) -> Iterator[tuple[Registry, Registry, Settings]]:
    settings = Settings(home=tmp_path / "home", registry_url=pg_database_url,
                        artifacts=(tmp_path / "artifacts").as_uri())
    a, b = Registry.from_settings(settings), Registry.from_settings(settings)
    try:
        x = pd.DataFrame(np.random.default_rng(0).normal(size=(200, 2)), columns=["f0", "f1"])
        a.register(LogisticRegression().fit(x, (x["f0"] > 0).astype(int)), "m", sample=x.head(3),
                   alias="champion", tags={"train": "training:train"})
        yield a, b, settings
    finally:
        a.close()
        b.close()


def together(*calls: Callable[[], object]) -> None:
    barrier = threading.Barrier(len(calls))
    errors: list[BaseException] = []

    def go(call: Callable[[], object]) -> None:
        barrier.wait()
        try:
            call()
        except BaseException as exc:  # re-raised below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=go, args=(c,)) for c in calls]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    if errors:
        raise errors[0]


def test_two_replicas_start_one_run_per_alert_and_per_cron_tick(
        registries: tuple[Registry, Registry, Settings]) -> None:
    a, b, settings = registries
    clock = Clock(datetime(2026, 12, 7, 2, 59, 30, tzinfo=UTC).timestamp())
    spec = RetrainSpec.parse({"on_alerts": ["acc"], "schedule": "0 3 * * *", "min_interval": 0})
    one = RetrainService(a, settings, {"m": spec}, holder="replica-a", clock=clock)
    two = RetrainService(b, settings, {"m": spec}, holder="replica-b", clock=clock)
    incident, _ = AlertStore(a.database, clock=clock).open("acc", "m", 1, {"condition": "realized_drop > 0.1",
                                                                           "value": 0.2}, clock())
    together(lambda: one.tick(background=False), lambda: two.tick(background=False))
    runs = RunStore(a.database).list("m")
    assert [(r.trigger, r.trigger_key) for r in runs] == [("alert", f"alert:{incident.id}")]
    assert runs[0].evidence["rule"] == "acc"
    assert runs[0].state == "failed"  # no predictions were logged: it fails on min_rows, and says so
    assert "labelled rows" in (runs[0].reason or "")

    clock.now += 60  # 03:00:30: the 03:00 tick is due for whichever replica holds the lease
    together(lambda: one.tick(background=False), lambda: two.tick(background=False))
    together(lambda: one.tick(background=False), lambda: two.tick(background=False))
    keys = sorted(r.trigger_key or "" for r in RunStore(a.database).list("m"))
    assert keys == [f"alert:{incident.id}", "schedule:m:2026-12-07T03:00:00Z"]


def test_concurrent_triggers_without_the_lease_still_start_one_run(
        registries: tuple[Registry, Registry, Settings]) -> None:
    a, b, settings = registries
    spec = RetrainSpec.parse({"min_interval": 0})
    services = [RetrainService(reg, settings, {"m": spec}, holder=f"r{i}") for i, reg in enumerate((a, b, a, b))]
    started: list[object] = []
    together(*[lambda s=s: started.append(s.trigger("m", spec, trigger="alert", key="alert:99",
                                                     evidence={})) for s in services])
    assert len([r for r in started if r is not None]) == 1
    assert len(RunStore(a.database).list("m")) == 1
