"""Incidents in the registry database: one firing row per rule and model, notifications claimed once."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from shipyard.monitoring.alerts import AlertStore
from shipyard.registry.database import Database


@pytest.fixture
def database(tmp_path: Path) -> Iterator[Database]:
    db = Database(f"sqlite:///{tmp_path / 'registry.db'}")
    try:
        yield db
    finally:
        db.close()


def incidents_open_once_and_resolve(store: AlertStore) -> None:
    first, created = store.open("drop", "fraud", 3, {"value": 0.05}, at=100.0)
    again, created_again = store.open("drop", "fraud", 4, {"value": 0.07}, at=110.0)
    assert created and not created_again and again.id == first.id and again.evidence == {"value": 0.05}
    other, _ = store.open("drop", "churn", 1, {"value": 0.04}, at=120.0)
    assert [i.id for i in store.list()] == [other.id, first.id]  # newest first
    assert [i.model for i in store.list(model="fraud")] == ["fraud"]

    done = store.resolve("drop", "fraud", at=200.0, evidence={"value": 0.0})
    assert done is not None and (done.state, done.resolved_at, done.version) == ("resolved", 200.0, 3)
    assert done.evidence == {"value": 0.05, "resolution": {"value": 0.0}}
    assert store.resolve("drop", "fraud", at=210.0) is None  # nothing firing any more
    assert [i.model for i in store.list()] == ["churn"]
    assert [i.id for i in store.list(open_only=False)] == [other.id, first.id]
    assert store.states() == {("drop", "fraud"): False, ("drop", "churn"): True}

    reopened, created = store.open("drop", "fraud", 3, {}, at=300.0)
    assert created and reopened.id != first.id
    assert sorted((i.model, i.state) for i in store.latest()) == [("churn", "firing"), ("fraud", "firing")]


def claims_are_exactly_once(store: AlertStore) -> None:
    incident, _ = store.open("drop", "fraud", 1, {}, at=1.0)
    with ThreadPoolExecutor(8) as pool:
        won = list(pool.map(lambda i: store.claim(incident.id, "hook", f"replica-{i}"), range(16)))
    assert won.count(True) == 1
    # other notifiers of the same incident are claimed independently, whoever wrote meanwhile
    with ThreadPoolExecutor(8) as pool:
        won = list(pool.map(lambda i: store.claim(incident.id, f"n{i % 4}", f"replica-{i}"), range(16)))
    assert won.count(True) == 4
    store.record(incident.id, "hook", {"state": "sent", "attempts": 2})
    notified = store.get(incident.id).notified  # type: ignore[union-attr]
    assert notified["hook"]["state"] == "sent" and notified["hook"]["attempts"] == 2
    assert notified["hook"]["by"].startswith("replica-")
    assert sorted(notified) == ["hook", "n0", "n1", "n2", "n3"]
    assert not store.claim(incident.id, "hook", "late")
    assert not store.claim(10_000, "hook", "nobody")  # no such incident


def test_incidents_open_once_per_rule_and_model_and_resolve(database: Database) -> None:
    incidents_open_once_and_resolve(AlertStore(database))


def test_evidence_with_numpy_values_is_stored_as_plain_json(database: Database) -> None:
    import numpy as np

    store = AlertStore(database)
    incident, _ = store.open("drift", "fraud", 1, {"share": np.float64(0.6), "counts": np.arange(3),
                                                   "rows": np.int64(2000)}, at=1.0)
    assert store.get(incident.id).evidence == {"share": 0.6, "counts": [0, 1, 2], "rows": 2000}  # type: ignore[union-attr]


def test_each_notification_is_claimed_exactly_once(database: Database) -> None:
    claims_are_exactly_once(AlertStore(database))
