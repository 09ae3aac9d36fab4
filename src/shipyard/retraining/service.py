"""The server's retraining scheduler: cron schedules and alert incidents start runs, one replica at a time.

Every replica runs a ``RetrainService``; the ``retraining`` lease (``shipyard_leases``, the
rollout controller's table and SQL) lets one of them look for due triggers each ``interval``:

* a schedule: a cron tick (``cronsim``, UTC) that fell since the last look starts a run keyed
  ``schedule:MODEL:TIME`` (a replica that just took the lease looks back two lease lengths, over
  what a holder that died may have missed; a tick that finds a run in flight is skipped);
* an alert: an open incident of a rule the model's ``on_alerts`` names starts a run keyed
  ``alert:INCIDENT`` (the incident's evidence becomes the run's) once the incident is
  ``label_delay`` old, so the predictions that fired it have had the time to get their labels.

Each key starts at most one run whichever replica sees it (a unique column), a run waits
``min_interval`` after the model's last, and one run per model is in flight
(``store.RunStore.create``). A started run is carried out on a thread of its own (its
training in a separate process); the holder also reads the outcome of runs on a canary.
A tick that fails is logged and the loop goes on. When the server stops, training
processes still running are killed and their runs end ``failed``, saying why.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import anyio.to_thread

from shipyard.retraining.runner import Retrainer
from shipyard.retraining.spec import RetrainSpec
from shipyard.retraining.store import RetrainRefused, Run

if TYPE_CHECKING:
    from shipyard.config import Settings
    from shipyard.registry import Registry

__all__ = ["LEASE", "RetrainService", "due_tick", "specs_from"]

logger = logging.getLogger(__name__)

LEASE = "retraining"


def due_tick(expression: str, after: float, now: float) -> float | None:
    """The newest tick of the cron ``expression`` (UTC) in ``(after, now]``, or None."""
    from cronsim import CronSim

    latest = None
    for tick in CronSim(expression, datetime.fromtimestamp(after, UTC)):
        at = tick.timestamp()
        if at > now:
            break
        latest = at
    return latest


def specs_from(settings: Settings) -> dict[str, RetrainSpec]:
    """The retraining specs of the ``models:`` entries that have a ``retraining:`` block."""
    return {d.name: RetrainSpec.parse(d.retraining) for d in settings.models if d.retraining not in (None, {})}


class RetrainService:
    """Starts scheduled and alert-triggered runs while holding the lease (a server ``Service``).

    Args:
        registry: the registry (runs, alerts, the lease, the versions).
        settings: the server's settings (the prediction log's sink, the home folder).
        specs: each model's retraining spec.
        interval: seconds between looks.
        holder: this replica's name in the lease.
        clock: epoch seconds (cron ticks, the window, run times); tests pass a simulated one.
    """

    name = "retraining"

    def __init__(self, registry: Registry, settings: Settings, specs: Mapping[str, RetrainSpec], *,
                 interval: float = 10.0, holder: str | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.specs = dict(specs)
        self.interval = interval
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}"
        self.clock = clock
        self.retrainer = Retrainer(registry, settings, clock=clock)
        self.lease_seconds = max(3 * interval, 30.0)
        self._looked: dict[str, float] = {}
        self._threads: list[threading.Thread] = []
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    @property
    def store(self) -> Any:
        return self.retrainer.store

    async def start(self) -> None:
        self._stop = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="retraining")

    async def stop(self) -> None:
        """Stop looking, kill the training processes in flight (their runs fail), give the lease up."""
        self._stop.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.retrainer.stop()
        await anyio.to_thread.run_sync(self.join, 10.0)
        try:
            await anyio.to_thread.run_sync(self._traffic().release, LEASE, self.holder)
        except Exception:
            logger.exception("releasing the retraining lease failed; another replica takes over when it expires")

    async def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                await anyio.to_thread.run_sync(self.tick)
            except Exception:  # the loop never dies
                logger.exception("retraining: a tick failed; trying again in %.0fs", self.interval)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.interval)

    def _traffic(self) -> Any:
        from shipyard.rollout.store import TrafficStore

        return TrafficStore(self.retrainer.registry.database, clock=self.clock)

    def tick(self, *, background: bool = True) -> list[Run]:
        """Take or renew the lease; if held, start every due run and read canary outcomes. The runs started."""
        if not self._traffic().acquire(LEASE, self.holder, self.lease_seconds):
            self._looked.clear()  # another replica looks; when this one takes over it starts from then
            return []
        started: list[Run] = []
        now = self.clock()
        for model, spec in self.specs.items():
            for trigger, key, evidence in self.due(model, spec, now):
                run = self.trigger(model, spec, trigger=trigger, key=key, evidence=evidence)
                if run is not None:
                    started.append(run)
                    self._carry_out(run, spec, background)
                    break  # one run per model: the next trigger waits for the next tick
            for run in self.store.list(model, state="canary", limit=5):
                self.retrainer.reconcile(run)
        return started

    def due(self, model: str, spec: RetrainSpec, now: float) -> list[tuple[str, str, dict[str, Any]]]:
        """The triggers of ``model`` due now: (trigger, key, evidence)."""
        out: list[tuple[str, str, dict[str, Any]]] = []
        if spec.on_alerts:
            from shipyard.monitoring.alerts.store import AlertStore

            for incident in AlertStore(self.retrainer.registry.database).list(open_only=True, model=model):
                # the rows that fired it need label_delay to get their labels: the run waits as long
                if incident.rule in spec.on_alerts and incident.opened_at <= now - spec.label_delay:
                    out.append(("alert", f"alert:{incident.id}",
                                {"incident": incident.id, "rule": incident.rule, "opened_at": incident.opened_at,
                                 **{k: v for k, v in incident.evidence.items() if k in ("condition", "value")}}))
        if spec.schedule:
            # a replica that just took the lease over looks back over the time the last holder may have
            # missed; a tick it had handled already is refused by its key
            after = self._looked.get(model, now - 2 * self.lease_seconds)
            self._looked[model] = now
            tick = due_tick(spec.schedule, after, now)
            if tick is not None:
                at = datetime.fromtimestamp(tick, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
                out.append(("schedule", f"schedule:{model}:{at}", {"schedule": spec.schedule, "tick": at}))
        return out

    def trigger(self, model: str, spec: RetrainSpec, *, trigger: str, key: str,
                evidence: Mapping[str, Any]) -> Run | None:
        """Record a run for this trigger, or None when the store's rules refuse one (logged)."""
        try:
            return self.retrainer.create(model, spec, trigger=trigger, evidence=evidence, trigger_key=key)
        except RetrainRefused as exc:
            logger.debug("retraining %s: %s", model, exc)
            return None
        except Exception:
            logger.exception("retraining %s: starting a run for %s failed", model, key)
            return None

    def _carry_out(self, run: Run, spec: RetrainSpec, background: bool) -> None:
        logger.info("retraining %s: run %s started by %s", run.model, run.id, run.trigger_key)
        if not background:
            self.retrainer.execute(run, spec)
            return
        thread = threading.Thread(target=self.retrainer.execute, args=(run, spec), name=f"retrain-{run.id[:8]}",
                                  daemon=True)
        thread.start()
        self._threads = [t for t in self._threads if t.is_alive()] + [thread]

    def join(self, timeout: float | None = None) -> None:
        """Wait for the runs this service started (tests)."""
        for thread in list(self._threads):
            thread.join(timeout)
