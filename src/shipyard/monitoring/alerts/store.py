"""Alert incidents in ``shipyard_alerts`` (migration 0005), on SQLite and PostgreSQL.

* At most one *firing* row per rule and model: ``open`` checks and inserts in one write
  transaction, serialized per (rule, model) by SQLite's write lock or a PostgreSQL
  transaction-scoped advisory lock, so two evaluators cannot both open one.
* Each notifier runs once per incident: ``claim`` is a conditional UPDATE of the row's
  ``notified`` (compare-and-set on its stored text), so of two evaluators claiming the same
  incident and notifier exactly one succeeds, and only that one sends. ``record`` then
  writes how the send ended. A claim whose holder died before recording stays ``claimed``
  and is never sent again: for a retraining trigger, missing one run (visible in
  ``shipyard alerts --json``) is better than running it twice.
"""

from __future__ import annotations

import builtins
import json
import time
import zlib
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson
import sqlalchemy as sa

from shipyard.monitoring.tables import alerts_t
from shipyard.registry.database import Database

__all__ = ["AlertStore", "Incident"]

_PG_LOCK_CLASS = 0x616C7274  # "alrt": the first key of the (int, int) advisory lock of one rule and model
_CLAIM_TRIES = 20  # compare-and-set rounds when other notifiers of the same incident write meanwhile


@dataclass(frozen=True)
class Incident:
    """One alert incident: opened when its rule fired for a model, resolved when the condition cleared."""

    id: int
    rule: str
    model: str
    version: int | None
    state: str
    """``firing`` or ``resolved``."""
    opened_at: float
    resolved_at: float | None
    evidence: dict[str, Any] = field(default_factory=dict)
    """What the notifiers received: the rule, the value, the window, the statistics; ``resolution`` once
    resolved."""
    notified: dict[str, Any] = field(default_factory=dict)
    """Per notifier (``NAME``, or ``NAME:resolved``): who claimed it and when, then how the send ended."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class AlertStore:
    """The incidents of one registry database.

    Args:
        database: the registry database (its schema at revision 0005 or later).
        clock: epoch seconds, for claims.
    """

    def __init__(self, database: Database, clock: Callable[[], float] = time.time) -> None:
        self.database = database
        self._clock = clock

    # -- incidents ----------------------------------------------------------------------

    def open(self, rule: str, model: str, version: int | None, evidence: Mapping[str, Any],
             at: float) -> tuple[Incident, bool]:
        """Open an incident for ``rule`` and ``model``, unless one is firing already.

        Returns:
            The firing incident and whether this call created it.
        """
        with self.database.transaction() as conn:
            self._lock(conn, rule, model)
            row = conn.execute(self._select().where(
                alerts_t.c.rule == rule, alerts_t.c.model == model, alerts_t.c.state == "firing"
            ).order_by(alerts_t.c.id).limit(1)).mappings().first()
            if row is not None:
                return _incident(row), False
            new_id = conn.execute(alerts_t.insert().values(
                rule=rule, model=model, version=version, state="firing", opened_at=at, resolved_at=None,
                evidence=_jsonable(evidence), notified={},
            )).inserted_primary_key
            assert new_id is not None
        return Incident(int(new_id[0]), rule, model, version, "firing", at, None, _jsonable(evidence), {}), True

    def resolve(self, rule: str, model: str, at: float, evidence: Mapping[str, Any] | None = None) -> Incident | None:
        """Resolve the firing incident of ``rule`` and ``model`` (None when none is firing)."""
        with self.database.transaction() as conn:
            self._lock(conn, rule, model)
            row = conn.execute(self._select().where(
                alerts_t.c.rule == rule, alerts_t.c.model == model, alerts_t.c.state == "firing"
            ).order_by(alerts_t.c.id).limit(1)).mappings().first()
            if row is None:
                return None
            incident = _incident(row)
            merged = dict(incident.evidence)
            if evidence is not None:
                merged["resolution"] = _jsonable(evidence)
            conn.execute(alerts_t.update().where(alerts_t.c.id == incident.id)
                         .values(state="resolved", resolved_at=at, evidence=merged))
        return Incident(incident.id, rule, model, incident.version, "resolved", incident.opened_at, at, merged,
                        incident.notified)

    def get(self, incident_id: int) -> Incident | None:
        with self.database.connect() as conn:
            row = conn.execute(self._select().where(alerts_t.c.id == incident_id)).mappings().first()
        return None if row is None else _incident(row)

    def list(self, *, open_only: bool = True, model: str | None = None,
             limit: int | None = None) -> builtins.list[Incident]:
        """Incidents, newest first: the firing ones (``open_only``) or all of them."""
        query = self._select().order_by(alerts_t.c.id.desc())
        if open_only:
            query = query.where(alerts_t.c.state == "firing")
        if model is not None:
            query = query.where(alerts_t.c.model == model)
        if limit is not None:
            query = query.limit(limit)
        with self.database.connect() as conn:
            return [_incident(r) for r in conn.execute(query).mappings()]

    def latest(self) -> builtins.list[Incident]:
        """Per rule and model: the firing incident, else the last resolved one (what a new evaluator needs)."""
        newest = (sa.select(sa.func.max(alerts_t.c.id).label("id"))
                  .group_by(alerts_t.c.rule, alerts_t.c.model).subquery())
        query = self._select().where(sa.or_(alerts_t.c.state == "firing", alerts_t.c.id.in_(sa.select(newest.c.id))))
        with self.database.connect() as conn:
            return [_incident(r) for r in conn.execute(query.order_by(alerts_t.c.id)).mappings()]

    def states(self) -> dict[tuple[str, str], bool]:
        """Per (rule, model) that ever had an incident: whether one is firing now (the alert gauge)."""
        firing = sa.func.max(sa.case((alerts_t.c.state == "firing", 1), else_=0))
        with self.database.connect() as conn:
            rows = conn.execute(sa.select(alerts_t.c.rule, alerts_t.c.model, firing)
                                .group_by(alerts_t.c.rule, alerts_t.c.model)).all()
        return {(str(r), str(m)): bool(f) for r, m, f in rows}

    # -- notifications, exactly once --------------------------------------------------------

    def claim(self, incident_id: int, key: str, holder: str) -> bool:
        """Take the right to send notification ``key`` of an incident; False when it was taken before.

        A conditional UPDATE: it writes only if ``notified`` is still what was read, and
        another writer's change (a claim of another notifier) makes it read and try again.
        """
        for _ in range(_CLAIM_TRIES):
            with self.database.connect() as conn:
                text = conn.execute(sa.select(sa.cast(alerts_t.c.notified, sa.Text))
                                    .where(alerts_t.c.id == incident_id)).scalar()
            if text is None:
                return False  # no such incident
            notified = dict(json.loads(text))
            if key in notified:
                return False
            notified[key] = {"state": "claimed", "by": holder, "claimed_at": self._clock()}
            with self.database.transaction() as conn:
                done = conn.execute(alerts_t.update().where(
                    alerts_t.c.id == incident_id, sa.cast(alerts_t.c.notified, sa.Text) == text,
                ).values(notified=notified)).rowcount
            if done == 1:
                return True
        raise RuntimeError(f"could not claim notification {key} of incident {incident_id}: it kept changing")

    def record(self, incident_id: int, key: str, result: Mapping[str, Any]) -> None:
        """Write how notification ``key`` ended (merged into its claim)."""
        with self.database.transaction() as conn:
            query = sa.select(alerts_t.c.notified).where(alerts_t.c.id == incident_id)
            if self.database.dialect == "postgresql":
                query = query.with_for_update()
            value = conn.execute(query).scalar()
            if value is None:
                return
            notified = _loads(value)
            notified[key] = {**notified.get(key, {}), **_jsonable(result)}
            conn.execute(alerts_t.update().where(alerts_t.c.id == incident_id).values(notified=notified))

    # -- helpers --------------------------------------------------------------------------------

    @staticmethod
    def _select() -> sa.Select[Any]:
        return sa.select(alerts_t)

    def _lock(self, conn: sa.Connection, rule: str, model: str) -> None:
        """Serialize open/resolve of one rule and model (SQLite's write transactions are serialized already)."""
        if self.database.dialect == "postgresql":
            key = zlib.crc32(f"{rule}\x00{model}".encode()) - 2**31  # into a signed int4
            conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_PG_LOCK_CLASS, key)))


def _jsonable(value: Mapping[str, Any]) -> dict[str, Any]:
    """Plain JSON values: NumPy numbers and arrays from the statistics become floats and lists."""
    option = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS
    return dict(orjson.loads(orjson.dumps(dict(value), option=option, default=str)))


def _loads(value: Any) -> dict[str, Any]:
    if isinstance(value, str | bytes):
        return dict(json.loads(value))
    return dict(value or {})


def _incident(row: Any) -> Incident:  # a RowMapping
    return Incident(
        id=int(row["id"]), rule=str(row["rule"]), model=str(row["model"]),
        version=None if row["version"] is None else int(row["version"]), state=str(row["state"]),
        opened_at=float(row["opened_at"]),
        resolved_at=None if row["resolved_at"] is None else float(row["resolved_at"]),
        evidence=_loads(row["evidence"]), notified=_loads(row["notified"]),
    )
