"""The alert service: one evaluator at a time (the lease), incidents recorded, each notification sent once."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from shipyard.errors import ConfigError
from shipyard.monitoring.alerts import (
    AlertService,
    AlertStore,
    Delivery,
    MonitorSnapshot,
    Notification,
    Notifier,
    Rule,
)
from shipyard.monitoring.alerts.notifiers import WebhookNotifier
from shipyard.registry.database import Database

RULES = (Rule("accuracy-drop", "realized_drop", metric="accuracy", above=0.03, for_=3, notify=("hook",)),)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def database(tmp_path: Path) -> Iterator[Database]:
    db = Database(f"sqlite:///{tmp_path / 'registry.db'}")
    try:
        yield db
    finally:
        db.close()


class Clock:
    def __init__(self, start: float = 1_900_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


class Recorder(Notifier):
    """Counts what it is sent (shared by several services: one count for the fleet)."""

    def __init__(self, name: str = "hook", *, send_resolved: bool = False) -> None:
        self.name = name
        self.send_resolved = send_resolved
        self.sent: list[Notification] = []

    async def send(self, notification: Notification) -> Delivery:
        self.sent.append(notification)
        return Delivery(True, 1, "recorded")


def accuracy(at: float, value: float) -> MonitorSnapshot:
    return MonitorSnapshot("fraud", 1, "champion", at, realized={"accuracy": value}, registered={"accuracy": 0.9},
                           evidence={"window_end": at})


async def two_services_notify_once(database_a: Database, database_b: Database) -> None:
    """Two replicas (each with its own connection pool) tick over the same numbers: one notification."""
    clock = Clock()
    hook = Recorder(send_resolved=True)
    current: list[MonitorSnapshot] = []
    a = AlertService(database_a, RULES, {"hook": hook}, lambda: current, 10.0, "replica-a", clock=clock)
    b = AlertService(database_b, RULES, {"hook": hook}, lambda: current, 10.0, "replica-b", clock=clock)
    for _ in range(8):  # a sustained drop
        current[:] = [accuracy(clock.now, 0.85)]
        await a.tick()
        await b.tick()
        clock.now += 10
    assert a.leading and not b.leading
    assert [(n.rule, n.model, n.state) for n in hook.sent] == [("accuracy-drop", "fraud", "firing")]
    assert hook.sent[0].evidence["realized"] == 0.85

    await a.stop()  # releases the lease: b takes over from the store and fires nothing again
    for _ in range(5):
        current[:] = [accuracy(clock.now, 0.85)]
        assert (await b.tick()).leading
        clock.now += 10
    assert len(hook.sent) == 1

    current[:] = [accuracy(clock.now, 0.90)]  # recovered: resolved once, the resolution sent once
    await b.tick()
    await a.tick()
    assert [n.state for n in hook.sent] == ["firing", "resolved"]
    [incident] = AlertStore(database_a).list(open_only=False)
    assert incident.state == "resolved"
    assert {k: v["state"] for k, v in incident.notified.items()} == {"hook": "sent", "hook:resolved": "sent"}
    assert incident.notified["hook"]["by"] == "replica-a" and incident.notified["hook:resolved"]["by"] == "replica-b"


@pytest.mark.anyio
async def test_two_services_on_one_database_notify_once(database: Database, tmp_path: Path) -> None:
    other = Database(database.url)
    try:
        await two_services_notify_once(database, other)
    finally:
        other.close()


@pytest.mark.anyio
async def test_a_notification_missed_by_a_holder_that_died_is_sent_by_the_next(database: Database) -> None:
    store = AlertStore(database)
    store.open("accuracy-drop", "fraud", 1, {"value": 0.05}, at=1.0)  # opened, then the holder died
    hook = Recorder()
    service = AlertService(database, RULES, {"hook": hook}, lambda: [], 10.0, "next", clock=Clock())
    await service.tick()
    await service.tick()
    assert len(hook.sent) == 1 and hook.sent[0].evidence == {"value": 0.05}


@pytest.mark.anyio
async def test_a_failed_send_is_recorded_and_not_repeated(database: Database) -> None:
    class Broken(Notifier):
        name = "hook"
        calls = 0

        async def send(self, notification: Notification) -> Delivery:
            Broken.calls += 1
            raise RuntimeError("boom")

    clock = Clock()
    current: list[MonitorSnapshot] = []
    service = AlertService(database, RULES, {"hook": Broken()}, lambda: current, 10.0, "me", clock=clock)
    for _ in range(6):
        current[:] = [accuracy(clock.now, 0.5)]
        await service.tick()
        clock.now += 10
    [incident] = AlertStore(database).list()
    assert Broken.calls == 1
    assert incident.notified["hook"]["state"] == "failed" and "boom" in incident.notified["hook"]["detail"]


@pytest.mark.anyio
async def test_the_loop_outlives_errors(database: Database) -> None:
    calls = 0
    second = asyncio.Event()

    def snapshots() -> list[MonitorSnapshot]:
        nonlocal calls
        calls += 1
        if calls >= 2:
            second.set()
        if calls == 1:
            raise RuntimeError("the drift results could not be read")
        return []

    service = AlertService(database, RULES, {"hook": Recorder()}, snapshots, 0.01, "me")
    await service.start()
    try:
        await asyncio.wait_for(second.wait(), 30)
    finally:
        await service.stop()
    assert calls >= 2 and not service.leading


def test_a_rule_naming_an_unknown_notifier_is_refused(database: Database) -> None:
    with pytest.raises(ConfigError, match="alert rule 'accuracy-drop': no notifier named hook"):
        AlertService(database, RULES, {}, lambda: [], 10.0, "me")


@pytest.mark.anyio
async def test_webhook_retries_network_errors_and_5xx_but_not_4xx() -> None:
    statuses: list[int] = []
    bodies: list[dict[str, object]] = []
    script = iter([httpx.ConnectError("refused"), 503, 200, 400, 500, 500, 500])

    def handler(request: httpx.Request) -> httpx.Response:
        step = next(script)
        if isinstance(step, Exception):
            raise step
        statuses.append(step)
        bodies.append(json.loads(request.content))
        return httpx.Response(step)

    async def no_wait(seconds: float) -> None:
        pass

    hook = WebhookNotifier("hook", "http://hooks.test/x", retries=2, transport=httpx.MockTransport(handler),
                           sleep=no_wait)
    note = Notification(7, "accuracy-drop", "fraud", 1, "firing", 1.0, None, {"value": 0.05})
    first = await hook.send(note)
    assert (first.ok, first.attempts, first.status) == (True, 3, 200)
    refused = await hook.send(note)
    assert (refused.ok, refused.attempts, refused.status) == (False, 1, 400)
    exhausted = await hook.send(note)
    assert (exhausted.ok, exhausted.attempts, exhausted.status) == (False, 3, 500)
    assert bodies[0]["evidence"] == {"value": 0.05} and bodies[0]["incident"] == 7
