"""The audit log: every admin action, appended in the transaction of the action, hash-chained.

Each row's ``hash`` is the sha256 of its content (sequence number, time, actor, source,
action, target, outcome, details) and the previous row's hash, so editing a row, deleting
one or reordering them breaks the chain (``shipyard audit verify``). The one-row head
(``shipyard_audit_head``) is locked by each append, which orders concurrent writers on
SQLite and PostgreSQL alike, and holds the last sequence number and hash, so rows cut off
the end are noticed too.

``append`` takes the caller's connection: the action and its record commit together or not
at all. ``record`` opens a transaction of its own, for what writes nothing else (a refused
promotion); ``record_config`` appends the server's configuration when it changed. ``AuditLog``
reads the log (newest first) and verifies the chain page by page.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from shipyard.errors import RegistryError
from shipyard.security.principal import current_actor
from shipyard.security.tables import audit_head_t, audit_t

if TYPE_CHECKING:  # the registry's store imports this module: no import of the registry at run time
    from shipyard.config import Settings
    from shipyard.registry.database import Database

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

    def to_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "at": self.at, "actor": self.actor, "source": self.source, "action": self.action,
                "target": self.target, "outcome": self.outcome, "details": self.details,
                "prev_hash": self.prev_hash, "hash": self.hash}


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


def record(database: Database, action: str, target: str, *, outcome: str = "ok",
           details: dict[str, Any] | None = None) -> AuditEvent:
    """Append in a transaction of its own: for an action that wrote nothing else (a refused promotion)."""
    with database.transaction() as conn:
        return append(conn, action, target, outcome=outcome, details=details)


def record_config(database: Database, settings: Settings) -> AuditEvent | None:
    """Append ``config.change`` (target ``server``) when the settings differ from the last recorded ones.

    Details: the sha256 of the settings as ``shipyard config show`` renders them (secrets masked),
    that YAML, and the top-level keys that changed since the last record (None for the first).
    Returns the new entry, or None when nothing changed.
    """
    import yaml

    from shipyard.config import render_yaml

    text = render_yaml(settings)
    digest = hashlib.sha256(text.encode()).hexdigest()
    with database.transaction() as conn:
        _lock_head(conn)  # two servers starting at once: the second sees the first's record
        row = conn.execute(sa.select(audit_t.c.details).where(audit_t.c.action == "config.change")
                           .order_by(audit_t.c.seq.desc()).limit(1)).first()
        last = _json(row[0]) if row is not None else None
        last = last if isinstance(last, dict) else None
        if last is not None and last.get("sha256") == digest:
            return None
        changed: list[str] | None = None
        if last is not None:
            before, after = yaml.safe_load(str(last.get("yaml") or "")) or {}, yaml.safe_load(text) or {}
            changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
        return append(conn, "config.change", "server", details={"sha256": digest, "changed": changed, "yaml": text})


@dataclass(frozen=True)
class VerifyReport:
    """What ``AuditLog.verify`` found.

    Args:
        ok: the chain is intact (and the expected entry, if given, is in it unchanged).
        checked: how many entries were checked.
        head_seq: the head's sequence number (0: nothing appended yet).
        head_hash: the head's hash: keep it elsewhere (a ticket, another system) to detect later
            truncation by someone who can also rewrite the head.
        first_bad: the first entry found broken, or None.
        reason: why it is broken ("" when ok).
    """

    ok: bool
    checked: int
    head_seq: int
    head_hash: str
    first_bad: int | None = None
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "checked": self.checked, "head_seq": self.head_seq, "head_hash": self.head_hash,
                "first_bad": self.first_bad, "reason": self.reason}


class AuditLog:
    """Reads and verifies the audit log of one registry database.

    Args:
        database: the registry's database (the log lives beside the actions it records).
        page_size: rows read per query while verifying or iterating; memory stays bounded by it.
    """

    def __init__(self, database: Database, *, page_size: int = 1000) -> None:
        self.database = database
        self.page_size = page_size

    def read(self, *, action: str | None = None, target: str | None = None, actor: str | None = None,
             since: float | None = None, until: float | None = None, limit: int = 100,
             after_seq: int | None = None) -> list[AuditEvent]:
        """The matching entries, newest first, at most ``limit``.

        Args:
            action: an action (``alias.set``) or, without a dot, its family (``alias``: every ``alias.*``).
            target: a target (``fraud@champion``) or a model name (``fraud``: ``fraud``, ``fraud:N``, ``fraud@A``).
            actor: who acted, exactly.
            since: epoch seconds; entries at or after it.
            until: epoch seconds; entries before it.
            limit: at most this many (the newest).
            after_seq: only entries newer than this sequence number (to poll for new ones; to read
                everything in order, use ``entries``).
        """
        q = sa.select(audit_t)
        if action is not None:
            q = q.where(audit_t.c.action == action if "." in action
                        else audit_t.c.action.startswith(action + ".", autoescape=True))
        if target is not None:
            q = q.where(sa.or_(audit_t.c.target == target,
                               audit_t.c.target.startswith(target + ":", autoescape=True),
                               audit_t.c.target.startswith(target + "@", autoescape=True)))
        if actor is not None:
            q = q.where(audit_t.c.actor == actor)
        if since is not None:
            q = q.where(audit_t.c.at >= since)
        if until is not None:
            q = q.where(audit_t.c.at < until)
        if after_seq is not None:
            q = q.where(audit_t.c.seq > after_seq)
        with self.database.connect() as conn:
            rows = conn.execute(q.order_by(audit_t.c.seq.desc()).limit(limit)).mappings().all()
        return [_event(r) for r in rows]

    def entries(self, after_seq: int = 0) -> Iterator[AuditEvent]:
        """Every entry after ``after_seq``, oldest first, read a page at a time (for exports and followers)."""
        last = after_seq
        while True:
            with self.database.connect() as conn:
                rows = conn.execute(sa.select(audit_t).where(audit_t.c.seq > last).order_by(audit_t.c.seq)
                                    .limit(self.page_size)).mappings().all()
            yield from (_event(r) for r in rows)
            if len(rows) < self.page_size:
                return
            last = int(rows[-1]["seq"])

    def head(self) -> tuple[int, str]:
        """The last appended entry's sequence number and hash, from the head row (``(0, GENESIS)``: none yet)."""
        with self.database.connect() as conn:
            row = conn.execute(sa.select(audit_head_t.c.seq, audit_head_t.c.hash)
                               .where(audit_head_t.c.id == 1)).first()
        if row is None:
            raise RegistryError("the audit log's head row is missing: the registry database was edited by hand; "
                                "restore it from a backup")
        return int(row.seq), str(row.hash)

    def verify(self, expect: tuple[int, str] | None = None) -> VerifyReport:
        """Check the whole chain, in one consistent snapshot, a page at a time.

        Each entry's hash must match its content and the previous entry's hash, the sequence
        numbers must run 1, 2, ... without a gap, and the last entry must be the head's (rows
        cut off the end, or rows past the head, show). ``expect`` (a ``(seq, hash)`` noted
        earlier) must still be in the chain: this catches the end cut off *and* the head
        rolled back to match, which the chain alone cannot.
        """
        with self.database.connect() as conn:
            if self.database.dialect == "postgresql":  # one snapshot across the pages
                conn = conn.execution_options(isolation_level="REPEATABLE READ")
            head = conn.execute(sa.select(audit_head_t.c.seq, audit_head_t.c.hash)
                                .where(audit_head_t.c.id == 1)).first()
            if head is None:
                return VerifyReport(False, 0, 0, "", None, "the head row (shipyard_audit_head) is missing")
            head_seq, head_hash = int(head.seq), str(head.hash)

            def bad(seq: int | None, reason: str, checked: int) -> VerifyReport:
                return VerifyReport(False, checked, head_seq, head_hash, seq, reason)

            checked, prev_seq, prev_hash = 0, 0, GENESIS
            found_expected = expect == (0, GENESIS)  # noted before anything was appended
            while True:
                rows = conn.execute(sa.select(audit_t).where(audit_t.c.seq > prev_seq).order_by(audit_t.c.seq)
                                    .limit(self.page_size)).mappings().all()
                for r in rows:
                    e = _event(r)
                    if e.seq != prev_seq + 1:
                        return bad(prev_seq + 1, f"entry {prev_seq + 1} is missing (the next one is {e.seq}): "
                                                 "deleted", checked)
                    if e.prev_hash != prev_hash:
                        return bad(e.seq, f"its prev_hash is not entry {prev_seq}'s hash: entry {prev_seq} was "
                                          "changed and rehashed, or entries were replaced or reordered", checked)
                    if entry_hash(e.seq, e.at, e.actor, e.source, e.action, e.target, e.outcome, e.details,
                                  e.prev_hash) != e.hash:
                        return bad(e.seq, "its content does not match its hash: it was edited", checked)
                    if expect is not None and e.seq == expect[0]:
                        if e.hash != expect[1]:
                            return bad(e.seq, f"its hash is {e.hash}, not the expected {expect[1]}: the log was "
                                              "rewritten from here on", checked)
                        found_expected = True
                    checked += 1
                    prev_seq, prev_hash = e.seq, e.hash
                if len(rows) < self.page_size:
                    break
        if prev_seq > head_seq:
            return bad(head_seq + 1, f"entries past the head (seq {head_seq}) up to {prev_seq}: appended without "
                                     "the head, or the head was rolled back", checked)
        if prev_seq < head_seq:
            return bad(prev_seq + 1, f"the head says {head_seq} entries but the log ends at {prev_seq}: entries were "
                                     "cut off the end", checked)
        if prev_hash != head_hash:
            return bad(prev_seq, "the last entry's hash is not the head's: it was replaced", checked)
        if expect is not None and not found_expected:
            return bad(expect[0], f"expected entry {expect[0]} is not in the log, which ends at {prev_seq}: entries "
                                  "were cut off the end and the head rolled back", checked)
        return VerifyReport(True, checked, head_seq, head_hash)


def _lock_head(conn: Connection) -> None:
    conn.execute(sa.select(audit_head_t.c.seq).where(audit_head_t.c.id == 1).with_for_update())


def _json(value: Any) -> Any:
    # JSON columns come back decoded on both dialects; a string only from a hand-edited row (whose
    # hash then fails: verify reports it rather than raising here)
    if isinstance(value, str | bytes):
        try:
            return orjson.loads(value)
        except orjson.JSONDecodeError:
            return value
    return value


def _event(r: Any) -> AuditEvent:
    return AuditEvent(int(r["seq"]), float(r["at"]), str(r["actor"]), str(r["source"]), str(r["action"]),
                      str(r["target"]), str(r["outcome"]), _json(r["details"]), str(r["prev_hash"]),
                      str(r["hash"]))
