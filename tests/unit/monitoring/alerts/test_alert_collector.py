"""``shipyard_drift_alert{model,rule}``: 1 while firing, 0 once resolved, read from the store at most so often."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import generate_latest

from shipyard.monitoring.alerts import AlertCollector, AlertStore
from shipyard.registry.database import Database


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_alert_gauge_follows_the_incidents_and_reads_the_store_throttled(tmp_path: Path) -> None:
    database = Database(f"sqlite:///{tmp_path / 'registry.db'}")
    try:
        store = AlertStore(database)
        clock = Clock()
        collector = AlertCollector(store, refresh_seconds=5.0, clock=clock)
        registry = collector.registry()
        assert collector.refreshes == 0  # registering reads nothing
        assert b"shipyard_drift_alert{" not in generate_latest(registry)

        store.open("drift", "fraud", 2, {}, at=1.0)
        store.open("coverage", "churn", 1, {}, at=1.0)
        store.resolve("coverage", "churn", at=2.0)
        clock.now = 10.0
        text = generate_latest(registry).decode()
        assert 'shipyard_drift_alert{model="fraud",rule="drift"} 1.0' in text
        assert 'shipyard_drift_alert{model="churn",rule="coverage"} 0.0' in text

        store.resolve("drift", "fraud", at=3.0)
        clock.now = 12.0  # within refresh_seconds: the previous numbers
        assert 'shipyard_drift_alert{model="fraud",rule="drift"} 1.0' in generate_latest(registry).decode()
        clock.now = 15.0
        assert 'shipyard_drift_alert{model="fraud",rule="drift"} 0.0' in generate_latest(registry).decode()
        assert collector.refreshes == 3
    finally:
        database.close()
