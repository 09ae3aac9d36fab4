"""The audit log: every admin action, appended in the transaction of the action, hash-chained.

Each row's ``hash`` is the sha256 of its content (sequence number, time, actor, source,
action, target, outcome, details) and the previous row's hash, so editing a row, deleting
one or reordering them breaks the chain (``shipyard audit verify``). The one-row head
(``shipyard_audit_head``) is locked by each append, which orders concurrent writers on
SQLite and PostgreSQL alike, and holds the last sequence number and hash, so rows cut off
the end are noticed too.

``append`` takes the caller's connection: the action and its record commit together or not
at all.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from shipyard.security.principal import current_actor
from shipyard.security.tables import audit_head_t, audit_t

GENESIS = "0" * 64
OUTCOMES = ("ok", "refused", "failed")


@dataclass(frozen=True)
class AuditEvent:
    """One admin action as recorded."""

    seq: int
    at: float
    actor: str
    source: str
    action: str
    target: str
    outcome: str
    details: dict[str, Any] | None
    prev_hash: str
    hash: str


def entry_hash(seq: int, at: float, actor: str, source: str, action: str, target: str, outcome: str,
               details: dict[str, Any] | None, prev_hash: str) -> str:
    """The sha256 (hex) that chains an entry: its content and the hash of the one before, canonical JSON."""
    content = orjson.dumps(
        {"seq": seq, "at": at, "actor": actor, "source": source, "action": action, "target": target,
         "outcome": outcome, "details": details, "prev_hash": prev_hash},
        option=orjson.OPT_SORT_KEYS,
    )
    return hashlib.sha256(content).hexdigest()


def append(
    conn: Connection,
    action: str,
    target: str,
    *,
    outcome: str = "ok",
    details: dict[str, Any] | None = None,
    actor: str | None = None,
    source: str | None = None,
    at: float | None = None,
) -> AuditEvent:
    """Record ``action`` on ``target`` in the transaction of ``conn``.

    ``actor`` and ``source`` default to ``current_actor()`` (the request's principal and address,
    or the OS user and host from the CLI).
    """
    if outcome not in OUTCOMES:
        raise ValueError(f"audit outcome must be one of {OUTCOMES}, got {outcome!r}")
    who = current_actor()
    actor = (actor or who.name)[:256]
    source = (source or who.source)[:256]
    at = time.time() if at is None else at
    details = orjson.loads(orjson.dumps(details, option=orjson.OPT_SERIALIZE_NUMPY)) if details else None
    # the head's row lock orders appends; FOR UPDATE is a no-op on SQLite, whose writers are serial already
    head = conn.execute(sa.select(audit_head_t.c.seq, audit_head_t.c.hash)
                        .where(audit_head_t.c.id == 1).with_for_update()).one()
    seq, prev = int(head.seq) + 1, str(head.hash)
    digest = entry_hash(seq, at, actor, source, action, target[:256], outcome, details, prev)
    conn.execute(audit_t.insert().values(seq=seq, at=at, actor=actor, source=source, action=action,
                                         target=target[:256], outcome=outcome, details=details,
                                         prev_hash=prev, hash=digest))
    conn.execute(audit_head_t.update().where(audit_head_t.c.id == 1).values(seq=seq, hash=digest))
    return AuditEvent(seq, at, actor, source, action, target[:256], outcome, details, prev, digest)
