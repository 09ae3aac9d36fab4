"""Retraining runs in the registry database (``shipyard_retrain_runs``, migration 0007).

A run moves through ``STATES``::

    queued -> assembling -> training -> registered -> gated -> canary -> promoted
                                                          \\-> promoted (no canary)
       any of them -> failed          gated | canary -> rejected

``create`` is where the rules of when a run may start live, in one transaction:

* at most one run per model in flight: the ``inflight`` column holds the model's name
  until the run is final, under a unique index, so a second ``create`` fails whatever
  process or replica makes it (``RunInFlight``);
* one run per trigger: a schedule tick or an alert incident carries a ``trigger_key``,
  also unique, so two replicas that see the same tick start it once (``TriggerSeen``);
* a minimum interval: a triggered run is refused when the model's last run started less
  than ``min_interval`` seconds before (``TooSoon``); a run by hand may ``force`` past it.

A run whose process died stays in flight until it was last updated ``stale_seconds`` ago
(the runner touches a run every minute while it trains); ``create`` then marks it failed
("abandoned") and goes on.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import sqlalchemy as sa

from shipyard.errors import Kind, ModelNotFound, ShipyardError
from shipyard.registry.database import Database

__all__ = ["FINAL", "STATES", "RetrainRefused", "Run", "RunInFlight", "RunNotFound", "RunStore", "TooSoon",
           "TriggerSeen", "runs_t"]

STATES = ("queued", "assembling", "training", "registered", "gated", "canary", "promoted", "rejected", "failed")
FINAL = frozenset({"promoted", "rejected", "failed"})
TRIGGERS = ("hand", "schedule", "alert")
_LOG_LIMIT = 64_000  # characters of log kept per run (the newest)

metadata = sa.MetaData()
runs_t = sa.Table(
    "shipyard_retrain_runs", metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("model", sa.String(128), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("trigger", sa.String(16), nullable=False),
    sa.Column("trigger_key", sa.String(256), nullable=True),
    sa.Column("inflight", sa.String(128), nullable=True),
    sa.Column("evidence", sa.JSON, nullable=False),
    sa.Column("options", sa.JSON, nullable=False),
    sa.Column("parent_version", sa.Integer, nullable=True),
    sa.Column("candidate_version", sa.Integer, nullable=True),
    sa.Column("dataset", sa.JSON, nullable=True),
    sa.Column("gates", sa.JSON, nullable=True),
    sa.Column("reason", sa.Text, nullable=True),
    sa.Column("log", sa.Text, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Column("finished_at", sa.Float, nullable=True),
    sa.UniqueConstraint("trigger_key", name="uq_shipyard_retrain_runs_trigger"),
    sa.UniqueConstraint("inflight", name="uq_shipyard_retrain_runs_inflight"),
    sa.Index("ix_shipyard_retrain_runs_model", "model", "created_at"),
)


class RetrainRefused(ShipyardError):
    """A run was not started (another is in flight, the trigger started one already, or it is too soon)."""

    kind: ClassVar[Kind] = "conflict"


class RunInFlight(RetrainRefused):
    def __init__(self, model: str, run_id: str, state: str) -> None:
        self.model, self.run_id = model, run_id
        super().__init__(f"{model} has a retraining run in flight ({run_id}, {state}); one run per model at a time")


class TriggerSeen(RetrainRefused):
    def __init__(self, model: str, key: str) -> None:
        self.model, self.key = model, key
        super().__init__(f"{model}: the trigger {key} started a run already")


class TooSoon(RetrainRefused):
    def __init__(self, model: str, wait: float) -> None:
        self.model, self.wait = model, wait
        super().__init__(f"{model}: the last run started less than min_interval ago; next in {wait:.0f}s "
                         "(--force starts one anyway)")


class RunNotFound(ModelNotFound):
    def __init__(self, run_id: str, hint: str = "") -> None:
        super().__init__(run_id)
        self.message = f"no retraining run has id {run_id!r}{hint}"
        self.args = (self.message,)


@dataclass(frozen=True)
class Run:
    """One retraining run as stored."""

    id: str
    model: str
    state: str
    trigger: str
    trigger_key: str | None
    evidence: Mapping[str, Any]
    options: Mapping[str, Any]
    parent_version: int | None
    candidate_version: int | None
    dataset: Mapping[str, Any] | None
    gates: Any
    reason: str | None
    log: str
    created_at: float
    updated_at: float
    finished_at: float | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def final(self) -> bool:
        return self.state in FINAL

    def to_dict(self, *, with_log: bool = True) -> dict[str, Any]:
        out = {
            "id": self.id, "model": self.model, "state": self.state, "trigger": self.trigger,
            "trigger_key": self.trigger_key, "evidence": dict(self.evidence), "options": dict(self.options),
            "parent_version": self.parent_version, "candidate_version": self.candidate_version,
            "dataset": None if self.dataset is None else dict(self.dataset), "gates": self.gates,
            "reason": self.reason, "created_at": self.created_at, "updated_at": self.updated_at,
            "finished_at": self.finished_at,
        }
        if with_log:
            out["log"] = self.log
        return out


def _run(row: Any) -> Run:
    m = row._mapping
    return Run(m["id"], m["model"], m["state"], m["trigger"], m["trigger_key"], m["evidence"] or {},
               m["options"] or {}, m["parent_version"], m["candidate_version"], m["dataset"], m["gates"],
               m["reason"], m["log"] or "", m["created_at"], m["updated_at"], m["finished_at"])


class RunStore:
    """Create, advance and list retraining runs.

    Args:
        database: the registry database (migration 0007 made the table).
        clock: epoch seconds (tests pass a simulated clock).
        stale_seconds: a run not updated for this long is taken as abandoned by a dead process.
    """

    def __init__(self, database: Database, *, clock: Callable[[], float] = time.time,
                 stale_seconds: float = 6 * 3600.0) -> None:
        self.database = database
        self.clock = clock
        self.stale_seconds = stale_seconds

    def create(self, model: str, *, trigger: str, evidence: Mapping[str, Any] | None = None,
               options: Mapping[str, Any] | None = None, trigger_key: str | None = None,
               min_interval: float = 0.0, force: bool = False) -> Run:
        """A new ``queued`` run of ``model``, if the rules of the module docstring allow one.

        Raises:
            RunInFlight, TriggerSeen, TooSoon: the run was not started (nothing was written).
        """
        if trigger not in TRIGGERS:
            raise ValueError(f"trigger must be one of {TRIGGERS}, got {trigger!r}")
        now = self.clock()
        self._abandon_stale(model, now)
        run_id = uuid.uuid4().hex
        try:
            with self.database.transaction() as conn:
                if trigger_key is not None and conn.execute(
                        sa.select(runs_t.c.id).where(runs_t.c.trigger_key == trigger_key)).first() is not None:
                    raise TriggerSeen(model, trigger_key)
                busy = conn.execute(sa.select(runs_t.c.id, runs_t.c.state).where(runs_t.c.inflight == model)).first()
                if busy is not None:
                    raise RunInFlight(model, busy[0], busy[1])
                last = conn.execute(sa.select(sa.func.max(runs_t.c.created_at))
                                    .where(runs_t.c.model == model)).scalar()
                if not force and last is not None and now - last < min_interval:
                    raise TooSoon(model, min_interval - (now - last))
                conn.execute(sa.insert(runs_t).values(
                    id=run_id, model=model, state="queued", trigger=trigger, trigger_key=trigger_key,
                    inflight=model, evidence=dict(evidence or {}), options=dict(options or {}),
                    log="", created_at=now, updated_at=now))
        except sa.exc.IntegrityError:
            # another process inserted first, between our reads and our insert: say which rule it was
            if trigger_key is not None and self._by_key(trigger_key) is not None:
                raise TriggerSeen(model, trigger_key) from None
            busy_run = self.in_flight(model)
            raise RunInFlight(model, busy_run.id if busy_run else "?", busy_run.state if busy_run else "?") from None
        return self.get(run_id)

    def _by_key(self, key: str) -> Run | None:
        with self.database.connect() as conn:
            row = conn.execute(sa.select(runs_t).where(runs_t.c.trigger_key == key)).first()
        return None if row is None else _run(row)

    def _abandon_stale(self, model: str, now: float) -> None:
        with self.database.transaction() as conn:
            conn.execute(sa.update(runs_t).where(
                runs_t.c.inflight == model, runs_t.c.updated_at < now - self.stale_seconds,
                runs_t.c.state != "canary",  # a canary waits on the rollout controller, not on a process
            ).values(state="failed", inflight=None, finished_at=now, updated_at=now,
                     reason="abandoned: its process stopped updating it"))

    def get(self, run_id: str) -> Run:
        with self.database.connect() as conn:
            row = conn.execute(sa.select(runs_t).where(runs_t.c.id == run_id)).first()
        if row is None:
            raise RunNotFound(run_id)
        return _run(row)

    def in_flight(self, model: str) -> Run | None:
        with self.database.connect() as conn:
            row = conn.execute(sa.select(runs_t).where(runs_t.c.inflight == model)).first()
        return None if row is None else _run(row)

    def list(self, model: str | None = None, *, state: str | None = None, limit: int = 50) -> list[Run]:
        """Runs, newest first."""
        query = sa.select(runs_t).order_by(runs_t.c.created_at.desc(), runs_t.c.id).limit(limit)
        if model is not None:
            query = query.where(runs_t.c.model == model)
        if state is not None:
            query = query.where(runs_t.c.state == state)
        with self.database.connect() as conn:
            return [_run(r) for r in conn.execute(query)]

    def update(self, run_id: str, *, state: str | None = None, log: str = "", **values: Any) -> Run:
        """Set ``state`` and the given columns, append ``log`` lines; a final state ends the run's flight."""
        if state is not None and state not in STATES:
            raise ValueError(f"state must be one of {STATES}, got {state!r}")
        now = self.clock()
        changes: dict[str, Any] = {"updated_at": now, **values}
        if state is not None:
            changes["state"] = state
            if state in FINAL:
                changes["inflight"] = None
                changes["finished_at"] = now
        with self.database.transaction() as conn:
            if log:
                current = conn.execute(sa.select(runs_t.c.log).where(runs_t.c.id == run_id)).scalar() or ""
                changes["log"] = (current + log if log.endswith("\n") else current + log + "\n")[-_LOG_LIMIT:]
            result = conn.execute(sa.update(runs_t).where(runs_t.c.id == run_id).values(**changes))
            if not result.rowcount:
                raise RunNotFound(run_id)
        return self.get(run_id)
