"""The alert loop: evaluate the rules, record incidents, notify, while holding the ``alerts`` lease.

Every replica of a server runs an ``AlertService``; the lease in ``shipyard_leases`` lets one
of them evaluate at a time (the others tick, find it taken and do nothing; one takes over
within ``lease_seconds`` once the holder stops renewing, at once when it stops cleanly).

Each tick the holder:

1. takes the snapshots (``snapshots()``, the integrator's view of drift results and
   realized metrics) and runs ``engine.evaluate`` over them;
2. records what changed: ``AlertStore.open`` (one firing row per rule and model) and
   ``AlertStore.resolve``;
3. sends every open incident's notifications not sent yet (and resolutions, to notifiers
   with ``send_resolved``): each after ``AlertStore.claim`` succeeded, so a notification
   goes out once per incident even when two replicas evaluate at the same moment, and one
   that a holder missed before it died is sent by the next.

The engine's state lives in the holder's memory. A holder that (re)takes the lease starts
from the store (``AlertState.from_incidents``): open incidents are firing, the last
resolution starts the cool-down, so nothing fires twice; only debounce streaks in progress
start again. The loop never dies: an error is logged and the next tick tries again.

Notifications of one tick run concurrently and the tick waits for them: a command that
should run long (a retraining job) should start the job and return.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio.to_thread

from shipyard.errors import ConfigError
from shipyard.monitoring.alerts import _lease
from shipyard.monitoring.alerts.engine import AlertState, Transition, evaluate
from shipyard.monitoring.alerts.notifiers import Delivery, Notification, Notifier, build_notifier
from shipyard.monitoring.alerts.rules import NotifierSpec, Rule, RuleSet
from shipyard.monitoring.alerts.snapshot import MonitorSnapshot
from shipyard.monitoring.alerts.store import AlertStore, Incident
from shipyard.registry.database import Database

if TYPE_CHECKING:
    from shipyard.config import AlertsConfig

__all__ = ["LEASE", "AlertService", "Sent", "TickResult"]

logger = logging.getLogger(__name__)

LEASE = "alerts"
"""The lease only one evaluator of a database holds at a time."""


@dataclass(frozen=True)
class Sent:
    """One notification this tick sent (or tried to)."""

    incident: int
    key: str
    """The notifier's name, ``NAME:resolved`` for a resolution."""
    delivery: Delivery


@dataclass(frozen=True)
class TickResult:
    """What one tick did (for logs and tests)."""

    leading: bool
    transitions: list[Transition] = field(default_factory=list)
    sent: list[Sent] = field(default_factory=list)


class AlertService:
    """A ``Service`` that evaluates alert rules every ``interval`` seconds while it holds the lease.

    Args:
        database: the registry database (incidents and the lease).
        rules: the rules (``RuleSet.rules``).
        notifiers: by name, the notifiers the rules name (``NotifierSpec`` values are built).
        snapshots: returns the latest ``MonitorSnapshot`` of every served model, version and arm; called
            in a worker thread, so it may read the database.
        interval: seconds between ticks.
        holder: this process's name in the lease; default host and process id.
        lease_seconds: how long the lease lasts unrenewed; default three intervals.
        clock: epoch seconds (incident times, the cool-down, the lease).

    Raises:
        ConfigError: a rule names a notifier not given; the lease would lapse between ticks.
    """

    name = "alerts"

    def __init__(
        self,
        database: Database,
        rules: Sequence[Rule],
        notifiers: Mapping[str, Notifier | NotifierSpec],
        snapshots: Callable[[], Sequence[MonitorSnapshot]],
        interval: float = 10.0,
        holder: str | None = None,
        *,
        lease_seconds: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not interval > 0:
            raise ConfigError(f"alert service: interval must be positive, got {interval}")
        self.lease_seconds = 3 * interval if lease_seconds is None else lease_seconds
        if self.lease_seconds <= interval:
            raise ConfigError(f"alert service: lease_seconds ({self.lease_seconds}) must exceed interval "
                              f"({interval}), or the lease lapses between ticks")
        self.database = database
        self.store = AlertStore(database, clock)
        self.rules = tuple(rules)
        self.notifiers: dict[str, Notifier] = {
            name: n if isinstance(n, Notifier) else build_notifier(n) for name, n in notifiers.items()
        }
        for rule in self.rules:
            missing = [n for n in rule.notify if n not in self.notifiers]
            if missing:
                raise ConfigError(f"alert rule {rule.name!r}: no notifier named {', '.join(missing)}")
        self.snapshots = snapshots
        self.interval = interval
        self.holder = holder or f"{socket.gethostname()}-{os.getpid()}"
        self._clock = clock
        self._rules = {r.name: r for r in self.rules}
        self._state: AlertState | None = None
        self._stop: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self.leading = False
        """Whether the last tick held the lease."""

    @classmethod
    def from_config(cls, database: Database, config: AlertsConfig,
                    snapshots: Callable[[], Sequence[MonitorSnapshot]], holder: str | None = None,
                    **kwargs: Any) -> AlertService:
        """The service ``monitoring.alerts`` describes (its ``evaluate_seconds`` must be positive)."""
        rule_set = RuleSet.parse(config.rules, config.notifiers)
        return cls(database, rule_set.rules, dict(rule_set.notifiers), snapshots, config.evaluate_seconds, holder,
                   **kwargs)

    @property
    def state(self) -> AlertState | None:
        """The engine's state (None until this process evaluated as the holder)."""
        return self._state

    # -- the service ------------------------------------------------------------------------

    async def start(self) -> None:
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(self._loop(self._stop), name=self.name)

    async def stop(self) -> None:
        """Finish the tick in progress, then release the lease so another replica takes over at once."""
        if self._stop is not None and self._task is not None:
            self._stop.set()
            await self._task
            self._stop = self._task = None
        if self.leading:
            try:
                await anyio.to_thread.run_sync(_lease.release, self.database, LEASE, self.holder)
            except Exception:
                logger.exception("releasing the alerts lease failed; another replica takes over when it expires")
            self.leading = False

    async def _loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.tick()
            except Exception:
                logger.exception("alert evaluation failed; trying again in %.1fs", self.interval)
            with contextlib.suppress(TimeoutError):  # the interval passed without a stop
                await asyncio.wait_for(stop.wait(), self.interval)

    # -- one tick ---------------------------------------------------------------------------

    async def tick(self) -> TickResult:
        """Take or renew the lease; if held, evaluate, record and notify. Returns what was done."""
        held = await anyio.to_thread.run_sync(
            _lease.acquire, self.database, LEASE, self.holder, self.lease_seconds, self._clock())
        if held != self.leading:
            logger.info("alerts: %s %s the lease", self.holder, "took" if held else "lost")
            self.leading = held
            self._state = None  # whatever happened meanwhile is in the store
        if not held:
            return TickResult(False)
        if self._state is None:
            incidents = await anyio.to_thread.run_sync(self.store.latest)
            self._state = AlertState.from_incidents(incidents, self.rules)
        snaps = await anyio.to_thread.run_sync(self.snapshots)
        state, transitions = evaluate(self.rules, list(snaps), self._state, self._clock())
        resolved = await anyio.to_thread.run_sync(self._record, transitions)
        self._state = state  # only once recorded: a failed write evaluates the same again next tick
        opened = await anyio.to_thread.run_sync(self.store.list)
        jobs = [*(self._notify(i) for i in opened), *(self._notify(i) for i in resolved)]
        sent = [s for batch in await asyncio.gather(*jobs) for s in batch]
        return TickResult(True, transitions, sent)

    def _record(self, transitions: Sequence[Transition]) -> list[Incident]:
        resolved = []
        for t in transitions:
            if t.kind == "opened":
                incident, created = self.store.open(t.rule, t.model, t.version, t.evidence, t.at)
                if created:
                    logger.warning("alert %s opened for %s (incident %d): %s", t.rule, t.model, incident.id,
                                   t.evidence.get("condition"))
            else:
                done = self.store.resolve(t.rule, t.model, t.at, t.evidence)
                if done is not None:
                    logger.info("alert %s resolved for %s (incident %d)", t.rule, t.model, done.id)
                    resolved.append(done)
        return resolved

    async def _notify(self, incident: Incident) -> list[Sent]:
        rule = self._rules.get(incident.rule)
        if rule is None:
            return []  # a rule no longer configured: its incidents stay as they are
        firing = incident.state == "firing"
        notification = Notification(incident.id, incident.rule, incident.model, incident.version, incident.state,
                                    incident.opened_at, incident.resolved_at, incident.evidence)
        sent = []
        for name in rule.notify:
            notifier = self.notifiers[name]
            key = name if firing else f"{name}:resolved"
            if key in incident.notified or not (firing or notifier.send_resolved):
                continue
            if not await anyio.to_thread.run_sync(self.store.claim, incident.id, key, self.holder):
                continue  # another evaluator has it
            try:
                delivery = await notifier.send(notification)
            except Exception as exc:  # a notifier's bug: recorded like a failed send
                logger.exception("alert notifier %s failed", name)
                delivery = Delivery(False, 1, f"{type(exc).__name__}: {exc}")
            if not delivery.ok:
                logger.warning("alert %s (incident %d): notifier %s failed: %s", incident.rule, incident.id, name,
                               delivery.detail)
            result = {"state": "sent" if delivery.ok else "failed", "finished_at": self._clock(),
                      **delivery.to_dict()}
            await anyio.to_thread.run_sync(self.store.record, incident.id, key, result)
            sent.append(Sent(incident.id, key, delivery))
        return sent
