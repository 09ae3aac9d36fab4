"""The server's drift monitor: replicas' windows summed per period, each closed period compared once.

Two recorders stand for two replicas on one registry database (SQLite here; the
PostgreSQL twin is in tests/integration). The clock is simulated, so periods close
when the test says.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from shipyard.config import DriftConfig
from shipyard.context import RequestContext
from shipyard.monitoring.drift.profile import Profile, profile_of
from shipyard.monitoring.drift_monitor import DriftCollector, DriftMonitor, DriftRecorder, latest_results
from shipyard.monitoring.events import PredictionEvent
from shipyard.monitoring.tables import drift_results_t, drift_windows_t
from shipyard.registry.database import Database
from shipyard.rollout.store import TrafficStore

WINDOW = 60.0
T0 = 1_800_000_000.0  # a period start (a multiple of 60)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def database(tmp_path: Path) -> Database:
    return Database(f"sqlite:///{tmp_path / 'registry.db'}")


@pytest.fixture
def profile() -> Profile:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5_000, 3))
    return profile_of({"x": x}, {"y": (x[:, 0] > 0).astype(np.int64)})


def events(rng: np.random.Generator, n: int, at: float, shift: float = 0.0, arm: str = "champion",
           version: int = 1) -> list[PredictionEvent]:
    out = []
    for _ in range(n):
        x = rng.normal(size=(1, 3))
        x[:, 1] += shift
        out.append(PredictionEvent(RequestContext.new("rest", None), "m", version, arm, {"x": x},
                                   {"y": (x[:, 0] > 0).astype(np.int64)}, at, 0.001, "ok", rows=1))
    return out


def replica(database: Database, profile: Profile, name: str, clock: Clock,
            config: DriftConfig) -> DriftMonitor:
    def profiles(model: str, version: int) -> Profile | None:
        return profile if (model, version) == ("m", 1) else None

    recorder = DriftRecorder(profiles, window_seconds=config.window_seconds)
    return DriftMonitor(database, recorder, profiles, config, TrafficStore(database, clock=clock), name,
                        interval=1.0, clock=clock)


def test_two_replicas_windows_are_summed_and_each_period_is_compared_once(database: Database,
                                                                            profile: Profile) -> None:
    clock = Clock()
    config = DriftConfig(window_seconds=WINDOW, min_rows=200)
    a, b = (replica(database, profile, name, clock, config) for name in ("a", "b"))
    rng = np.random.default_rng(1)
    a.recorder.observe(events(rng, 150, T0 + 1))
    b.recorder.observe(events(rng, 150, T0 + 2))  # alone, each is under min_rows; summed, 300 are compared
    clock.now = T0 + 30
    a.tick()
    b.tick()
    with database.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(drift_windows_t)).scalar() == 2
        assert conn.execute(sa.select(sa.func.count()).select_from(drift_results_t)).scalar() == 0  # still open

    clock.now = T0 + WINDOW + 5  # the period closed; a holds the lease and compares it
    a.tick()
    b.tick()
    a.tick()
    results = latest_results(database, model="m", limit_per_arm=10)
    assert len(results) == 1
    assert results[0]["rows"] == 300
    assert not results[0]["drifted"]
    assert a.compared + b.compared == 1


def test_a_shift_in_one_feature_is_reported_on_that_feature(database: Database, profile: Profile) -> None:
    clock = Clock()
    monitor = replica(database, profile, "a", clock, DriftConfig(window_seconds=WINDOW, min_rows=200))
    rng = np.random.default_rng(2)
    monitor.recorder.observe(events(rng, 1_000, T0 + 1, shift=1.0))
    clock.now = T0 + WINDOW + 5
    monitor.tick()
    (result,) = latest_results(database, model="m")
    drifted = {f["feature"] for f in result["payload"]["features"] if f["drifted"]}
    assert drifted == {"x[1]"}
    assert result["drifted"] is False  # one feature of three is under the default drift share of 0.5
    families = {m.name: m for m in DriftCollector(database).collect()}
    scores = {s.labels["feature"]: s.value for s in families["shipyard_drift_score"].samples}
    assert scores["x[1]"] > 0.5 > scores["x[0]"]


def test_versions_without_a_profile_and_failed_requests_are_not_binned(database: Database, profile: Profile) -> None:
    clock = Clock()
    monitor = replica(database, profile, "a", clock, DriftConfig(window_seconds=WINDOW))
    rng = np.random.default_rng(3)
    failed = [PredictionEvent(RequestContext.new("rest", None), "m", 1, "champion", None, None, T0, 0.0,
                              "invalid_input")]
    monitor.recorder.observe([*events(rng, 5, T0 + 1, version=2), *failed])
    assert monitor.recorder.binned == 0
    assert monitor.write_windows() == 0


def test_a_small_window_is_recorded_but_never_drifts(database: Database, profile: Profile) -> None:
    clock = Clock()
    monitor = replica(database, profile, "a", clock, DriftConfig(window_seconds=WINDOW, min_rows=200))
    rng = np.random.default_rng(4)
    monitor.recorder.observe(events(rng, 20, T0 + 1, shift=5.0))  # huge shift, 20 rows
    clock.now = T0 + WINDOW + 5
    monitor.tick()
    (result,) = latest_results(database, model="m")
    assert not result["drifted"]
    assert all(f["skipped"] and not f["drifted"] for f in result["payload"]["features"])
