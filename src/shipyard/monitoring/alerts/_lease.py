"""The ``alerts`` lease in ``shipyard_leases`` (migration 0003): one evaluator per database at a time.

The same rows and the same take-or-renew SQL as the rollout controller's lease
(``TrafficStore.acquire``), written against the table by name so that monitoring does not
import rollout (imports point down: rollout builds on monitoring, not the reverse).
"""

from __future__ import annotations

import sqlalchemy as sa

from shipyard.registry.database import Database

leases = sa.table("shipyard_leases", sa.column("name", sa.String), sa.column("holder", sa.String),
                  sa.column("expires_at", sa.Float))


def acquire(database: Database, name: str, holder: str, ttl_seconds: float, now: float) -> bool:
    """Take or renew the lease ``name`` until ``now + ttl_seconds``; False while another holder's is unexpired."""
    query = sa.select(leases.c.holder, leases.c.expires_at).where(leases.c.name == name)
    if database.dialect == "postgresql":
        query = query.with_for_update()
    try:
        with database.transaction() as conn:
            row = conn.execute(query).first()
            if row is None:
                conn.execute(sa.insert(leases).values(name=name, holder=holder, expires_at=now + ttl_seconds))
                return True
            if row[0] != holder and row[1] > now:
                return False
            conn.execute(sa.update(leases).where(leases.c.name == name)
                         .values(holder=holder, expires_at=now + ttl_seconds))
            return True
    except sa.exc.IntegrityError:
        return False  # another process inserted the lease first


def release(database: Database, name: str, holder: str) -> None:
    """Give the lease up (only its holder can), so another process need not wait for it to expire."""
    with database.transaction() as conn:
        conn.execute(sa.delete(leases).where(leases.c.name == name, leases.c.holder == holder))
