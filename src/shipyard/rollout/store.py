"""Traffic policies in the registry database: the one each served name has now, its history, and leases.

Every replica of a server reads the same rows (``PolicyRouter`` re-reads them every
``alias_refresh_seconds``), so a change made by ``shipyard rollout`` or by the
controller reaches the whole fleet within that time. Each change bumps the policy's
revision and appends it to the history with who made it and why. A write may say
which revision it read (``expected_revision``): a concurrent change then makes it
fail with ``PolicyConflict`` instead of being overwritten, which keeps a person's
``pause`` from being undone by a controller step computed a moment earlier.

Leases let one process at a time run the rollout controller: a lease is held until
it expires, renewed by its holder, and taken over by another once it lapsed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from shipyard.errors import RegistryError
from shipyard.registry.database import Database
from shipyard.rollout.policy import TrafficPolicy
from shipyard.rollout.tables import leases_t, traffic_history_t, traffic_t
from shipyard.security import audit


class PolicyConflict(RegistryError):
    """The policy changed since it was read; read it again and decide again."""

    def __init__(self, model: str, expected: int, found: int) -> None:
        super().__init__(f"the traffic policy of {model} is at revision {found}, not {expected}: "
                         "it changed meanwhile; read it again")
        self.model, self.expected, self.found = model, expected, found


@dataclass(frozen=True)
class PolicyChange:
    """One entry of a policy's history."""

    model: str
    revision: int
    state: str
    policy: TrafficPolicy
    reason: str
    at: str
    actor: str | None


class TrafficStore:
    """The ``shipyard_traffic`` tables of one registry database."""

    def __init__(self, database: Database, clock: Callable[[], float] = time.time) -> None:
        self.database = database
        self._clock = clock

    def _now(self) -> str:
        """The store's clock as the ISO time history entries keep (the controller reads step starts from it)."""
        return datetime.fromtimestamp(self._clock(), UTC).isoformat(timespec="microseconds")

    def _locked(self, query: Any) -> Any:
        """``SELECT ... FOR UPDATE`` on PostgreSQL (SQLite's write transactions are serialized already)."""
        return query.with_for_update() if self.database.dialect == "postgresql" else query

    # -- policies ---------------------------------------------------------------------

    def get(self, model: str) -> TrafficPolicy | None:
        with self.database.connect() as conn:
            row = conn.execute(sa.select(traffic_t.c.policy).where(traffic_t.c.model == model)).first()
        return None if row is None else TrafficPolicy.from_dict(_loads(row[0]))

    def all(self) -> dict[str, TrafficPolicy]:
        with self.database.connect() as conn:
            rows = conn.execute(sa.select(traffic_t.c.model, traffic_t.c.policy)).all()
        return {m: TrafficPolicy.from_dict(_loads(p)) for m, p in rows}

    def put(self, policy: TrafficPolicy, *, actor: str | None = None, reason: str = "",
            expected_revision: int | None = None) -> TrafficPolicy:
        """Store ``policy`` as its model's policy at the next revision; returns it as stored.

        Raises:
            PolicyConflict: ``expected_revision`` was given and the stored revision differs.
        """
        with self.database.transaction() as conn:
            current = conn.execute(
                self._locked(sa.select(traffic_t.c.revision).where(traffic_t.c.model == policy.model))
            ).scalar()
            if expected_revision is not None and (current or 0) != expected_revision:
                raise PolicyConflict(policy.model, expected_revision, int(current or 0))
            stored = replace(policy, revision=int(current or 0) + 1, reason=reason or policy.reason)
            body = stored.to_dict()
            values = {"policy": body, "revision": stored.revision, "state": stored.state,
                      "updated_at": self._now(), "actor": actor}
            if current is None:
                conn.execute(traffic_t.insert().values(model=policy.model, **values))
            else:
                conn.execute(traffic_t.update().where(traffic_t.c.model == policy.model).values(**values))
            conn.execute(traffic_history_t.insert().values(
                model=policy.model, revision=stored.revision, policy=body, state=stored.state,
                reason=stored.reason, at=values["updated_at"], actor=actor,
            ))
            audit.append(conn, "rollout.change", policy.model, details=_audit_details(body, stored.reason))
        return stored

    def delete(self, model: str, *, actor: str | None = None, reason: str = "") -> bool:
        """Remove a model's policy (its name routes as it was served again); False when it had none."""
        with self.database.transaction() as conn:
            row = conn.execute(sa.select(traffic_t.c.policy).where(traffic_t.c.model == model)).first()
            if row is None:
                return False
            policy = _loads(row[0])
            conn.execute(traffic_t.delete().where(traffic_t.c.model == model))
            conn.execute(traffic_history_t.insert().values(
                model=model, revision=int(policy.get("revision", 0)), policy=policy, state="removed",
                reason=reason, at=self._now(), actor=actor,
            ))
            audit.append(conn, "rollout.delete", model, details=_audit_details(policy, reason))
        return True

    def history(self, model: str) -> list[PolicyChange]:
        with self.database.connect() as conn:
            rows = conn.execute(
                sa.select(traffic_history_t).where(traffic_history_t.c.model == model)
                .order_by(traffic_history_t.c.id)
            ).mappings().all()
        return [PolicyChange(r["model"], r["revision"], r["state"], TrafficPolicy.from_dict(_loads(r["policy"])),
                             r["reason"] or "", r["at"], r["actor"]) for r in rows]

    # -- leases ---------------------------------------------------------------------------

    def acquire(self, name: str, holder: str, ttl_seconds: float) -> bool:
        """Take or renew the lease ``name`` for ``ttl_seconds``; False while another holder's is unexpired."""
        now = self._clock()
        try:
            with self.database.transaction() as conn:
                row = conn.execute(self._locked(
                    sa.select(leases_t.c.holder, leases_t.c.expires_at).where(leases_t.c.name == name)
                )).first()
                if row is None:
                    conn.execute(leases_t.insert().values(name=name, holder=holder, expires_at=now + ttl_seconds))
                    return True
                if row[0] != holder and row[1] > now:
                    return False
                conn.execute(leases_t.update().where(leases_t.c.name == name)
                             .values(holder=holder, expires_at=now + ttl_seconds))
                return True
        except sa.exc.IntegrityError:
            return False  # another process inserted the lease first

    def release(self, name: str, holder: str) -> None:
        """Give the lease up (only its holder can), so another process need not wait for it to expire."""
        with self.database.transaction() as conn:
            conn.execute(leases_t.delete().where(leases_t.c.name == name, leases_t.c.holder == holder))

    def holder(self, name: str) -> tuple[str, float] | None:
        """Who holds the lease and until when (epoch seconds), expired or not."""
        with self.database.connect() as conn:
            row = conn.execute(
                sa.select(leases_t.c.holder, leases_t.c.expires_at).where(leases_t.c.name == name)
            ).first()
        return None if row is None else (str(row[0]), float(row[1]))


def _audit_details(policy: dict[str, Any], reason: str) -> dict[str, Any]:
    """What the audit log keeps of a policy change: revision, kind, state, arms and why."""
    return {"revision": policy.get("revision"), "kind": policy.get("kind"), "state": policy.get("state"),
            "step": policy.get("step"), "arms": policy.get("arms"), "reason": reason}


def _loads(value: Any) -> dict[str, Any]:
    # JSON columns come back decoded on both dialects; a string only from a hand-edited row
    if isinstance(value, str):
        import json

        return dict(json.loads(value))
    return dict(value)
