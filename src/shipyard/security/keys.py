"""API keys in the registry database, and the in-memory ring a server checks every request against.

A key is the token ``sy_<key_id>_<secret>``: ``key_id`` (12 hex characters) is its public part,
shown in listings and logs; ``secret`` (32 random bytes, base64url) is shown once, at creation.
Only the sha256 of the secret is stored, so a copy of the database grants nothing.

``KeyStore`` creates, lists and revokes keys; each create and revoke is recorded in the audit log in
the transaction of the write. ``KeyRing`` keeps every key's hash in memory (a server reads the
database every ``refresh_seconds``, not per request) and turns a token into a ``Principal``.
"""

from __future__ import annotations

import asyncio
import base64
import builtins
import dataclasses
import hashlib
import hmac
import logging
import math
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import anyio.to_thread
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from shipyard._periodic import every
from shipyard.errors import InvalidInput, InvalidOption, Unauthenticated
from shipyard.registry.database import Database
from shipyard.security import audit
from shipyard.security.principal import SCOPES, Principal, current_actor
from shipyard.security.tables import api_keys_t, audit_head_t
from shipyard.types import check_name

logger = logging.getLogger(__name__)

PREFIX = "sy_"
_TOKEN_RE = re.compile(r"sy_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")  # 32 bytes: 43 base64url characters
#: An unknown key id re-reads the keys at most this often: a key made a moment ago works at once, and
#: a stream of made-up ids cannot turn into a stream of database reads.
MISS_RELOAD_SECONDS = 1.0

Status = Literal["active", "expired", "revoked"]


def hash_secret(secret: str) -> str:
    """The sha256 (hex) of a key's secret: what the database keeps instead of the secret."""
    return hashlib.sha256(secret.encode()).hexdigest()


def parse_token(token: str) -> tuple[str, str] | None:
    """``(key_id, secret)`` of a well-formed ``sy_<key_id>_<secret>`` token; None for anything else."""
    match = _TOKEN_RE.fullmatch(token)
    return (match.group(1), match.group(2)) if match else None


def _new_token() -> tuple[str, str, str]:
    key_id = secrets.token_hex(6)
    secret = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()
    return key_id, secret, f"{PREFIX}{key_id}_{secret}"


def iso(at: float | None) -> str | None:
    """Epoch seconds as ISO-8601 UTC to the second (None stays None)."""
    return None if at is None else datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", re.IGNORECASE)
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_expiry(text: str, now: float) -> float:
    """``12h``, ``30d``, ``4w`` (from ``now``) or an ISO-8601 date or time (UTC unless it says) -> epoch seconds.

    A date alone means 00:00 UTC that day.

    Raises:
        InvalidOption: neither a duration nor a time.
    """
    match = _DURATION.fullmatch(text)
    if match:
        return now + float(match.group(1)) * _UNIT[match.group(2).lower()]
    try:
        at = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise InvalidOption(f"--expires {text!r}: give a duration (12h, 30d, 4w) or a date (2027-01-31)",
                            option="--expires", expected="duration or ISO-8601 date", got=text) from None
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return at.timestamp()


@dataclass(frozen=True)
class ApiKey:
    """One API key as stored (never its secret).

    Args:
        key_id: the key's public part, the 12 hex characters after ``sy_``.
        name: unique among active keys; who is calling, in logs and the audit log.
        scopes: what it may do (``admin`` implies every scope).
        models: the models it may use; None: every model.
        rate_per_second: its own request rate; None: the server's ``security.auth.rate_limit_per_second``.
        created_at: epoch seconds.
        created_by: who created it (an OS user, or an admin key's name).
        expires_at: epoch seconds; None: never.
        revoked_at: epoch seconds; None: not revoked.
    """

    key_id: str
    name: str
    scopes: tuple[str, ...]
    models: tuple[str, ...] | None
    rate_per_second: float | None
    created_at: float
    created_by: str | None
    expires_at: float | None
    revoked_at: float | None

    def status(self, now: float) -> Status:
        """``revoked`` wins over ``expired``: a revoked key stays revoked."""
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and now >= self.expires_at:
            return "expired"
        return "active"

    def principal(self) -> Principal:
        """What a request carrying this key may do."""
        return Principal(
            name=self.name, kind="key", scopes=frozenset(self.scopes),
            models=None if self.models is None else frozenset(self.models),
            key_id=self.key_id, rate_per_second=self.rate_per_second,
        )

    def to_dict(self, now: float) -> dict[str, Any]:
        """A JSON-ready view, times in ISO-8601 UTC (no secret: there is none here)."""
        return {
            "key_id": self.key_id, "name": self.name, "scopes": list(self.scopes),
            "models": None if self.models is None else list(self.models), "rate_per_second": self.rate_per_second,
            "created_at": iso(self.created_at), "created_by": self.created_by, "expires_at": iso(self.expires_at),
            "revoked_at": iso(self.revoked_at), "status": self.status(now),
        }

    def _audit_details(self) -> dict[str, Any]:
        return {"name": self.name, "scopes": list(self.scopes),
                "models": None if self.models is None else list(self.models),
                "expires_at": self.expires_at, "rate_per_second": self.rate_per_second}


def _record(row: Any) -> ApiKey:
    return ApiKey(
        key_id=row.key_id, name=row.name, scopes=tuple(row.scopes),
        models=None if row.models is None else tuple(row.models),
        rate_per_second=row.rate_per_second, created_at=row.created_at, created_by=row.created_by,
        expires_at=row.expires_at, revoked_at=row.revoked_at,
    )


def _scopes(scopes: Iterable[str]) -> tuple[str, ...]:
    given = [scopes] if isinstance(scopes, str) else list(scopes)
    unknown = [s for s in given if s not in SCOPES]
    if unknown or not given:
        what = f"unknown scope {', '.join(repr(s) for s in unknown)}" if unknown else "a key needs at least one scope"
        raise InvalidInput(f"{what}; valid scopes: {', '.join(SCOPES)} (admin implies the others)",
                           field="scopes", expected=list(SCOPES), got=given)
    return tuple(s for s in SCOPES if s in given)  # SCOPES' order, once each


def _models(models: Iterable[str] | None) -> tuple[str, ...] | None:
    if models is None:
        return None
    given = [models] if isinstance(models, str) else list(models)
    if not given:
        raise InvalidInput("models is empty, so the key could use no model; give model names, or None for every model",
                           field="models", got=given)
    return tuple(sorted({check_name("model name", m) for m in given}))


class KeyStore:
    """API keys in the registry database: create (the token is returned once), list, get, revoke.

    Args:
        database: the registry's database (its schema at revision 0006 or later).
        clock: epoch seconds; tests inject their own.
    """

    def __init__(self, database: Database, clock: Callable[[], float] = time.time) -> None:
        self.database = database
        self.clock = clock

    def create(
        self,
        name: str,
        scopes: Iterable[str],
        *,
        models: Iterable[str] | None = None,
        expires_at: float | None = None,
        rate_per_second: float | None = None,
    ) -> tuple[ApiKey, str]:
        """Make a key; returns its record and its token, which exists nowhere else afterwards.

        Args:
            name: letters, digits, ``_``, ``.``, ``-``; no other active key may have it.
            scopes: some of ``SCOPES``.
            models: the models it may use; None: every model.
            expires_at: epoch seconds, in the future; None: never.
            rate_per_second: its own request rate (>= 0); None: the server's.

        Raises:
            InvalidInput: a bad name, scope, model name, rate or expiry, or a name an active key has.
        """
        check_name("key name", name)
        scope_list = _scopes(scopes)
        model_list = _models(models)
        now = self.clock()
        if rate_per_second is not None and not (math.isfinite(rate_per_second) and rate_per_second >= 0):
            raise InvalidInput(f"rate_per_second must be a number >= 0, got {rate_per_second}",
                               field="rate_per_second", got=rate_per_second)
        if expires_at is not None and not expires_at > now:
            raise InvalidInput(f"the expiry {iso(expires_at)} is not in the future (now {iso(now)})",
                               field="expires_at", got=iso(expires_at))
        key_id, secret, token = _new_token()
        key = ApiKey(key_id, name, scope_list, model_list, rate_per_second, now, current_actor().name[:256],
                     expires_at, None)
        with self.database.transaction() as conn:
            _lock(conn)  # two creates of one name: the second waits here, then sees the first
            clash = [k for k in _read(conn) if k.name == name and k.status(now) == "active"]
            if clash:
                raise InvalidInput(f"an active API key is named '{name}' already (id {clash[0].key_id}); "
                                   "pick another name, or revoke that key first", field="name", got=name)
            conn.execute(api_keys_t.insert().values(
                key_id=key_id, name=name, secret_sha256=hash_secret(secret), scopes=list(scope_list),
                models=None if model_list is None else list(model_list), rate_per_second=rate_per_second,
                created_at=now, created_by=key.created_by, expires_at=expires_at, revoked_at=None))
            audit.append(conn, "key.create", target=f"key:{key_id}", details=key._audit_details(), at=now)
        logger.info("API key %s (%s) created with scopes %s", name, key_id, ",".join(scope_list))
        return key, token

    def get(self, key_id_or_name: str) -> ApiKey:
        """The key with this id, or the active key with this name (else the one inactive key of that name).

        Raises:
            InvalidInput: no such key (the message names the keys there are), or a name several
                revoked or expired keys share (it names their ids).
        """
        with self.database.connect() as conn:
            return _find(_read(conn), key_id_or_name, self.clock())

    def revoke(self, key_id_or_name: str) -> ApiKey:
        """Revoke a key (see ``get`` for how it is found); it stops working at each server's next refresh.

        Revoking a revoked key changes nothing and records nothing; its record is returned.
        """
        now = self.clock()
        with self.database.transaction() as conn:
            _lock(conn)
            key = _find(_read(conn), key_id_or_name, now)
            if key.revoked_at is not None:
                return key
            conn.execute(api_keys_t.update().where(api_keys_t.c.key_id == key.key_id).values(revoked_at=now))
            audit.append(conn, "key.revoke", target=f"key:{key.key_id}", details=key._audit_details(), at=now)
        logger.info("API key %s (%s) revoked", key.name, key.key_id)
        return dataclasses.replace(key, revoked_at=now)

    def hashes(self) -> dict[str, tuple[ApiKey, str]]:
        """Every key, revoked and expired ones too: ``key_id -> (record, sha256 of its secret)``."""
        with self.database.connect() as conn:
            rows = conn.execute(sa.select(api_keys_t)).all()
        return {row.key_id: (_record(row), row.secret_sha256) for row in rows}

    def list(self, include_revoked: bool = True) -> builtins.list[ApiKey]:
        """Every key, oldest first; without the revoked ones unless ``include_revoked``."""
        with self.database.connect() as conn:
            keys = _read(conn)
        return keys if include_revoked else [k for k in keys if k.revoked_at is None]


def _lock(conn: Connection) -> None:
    """Order key writers by the audit head's row lock (which their audit append takes anyway).

    On PostgreSQL, two transactions checking for an active key of the same name would both find
    none; holding the lock from before the check makes the second one see the first's row.
    """
    conn.execute(sa.select(audit_head_t.c.seq).where(audit_head_t.c.id == 1).with_for_update())


def _read(conn: Connection) -> list[ApiKey]:
    query = sa.select(*(c for c in api_keys_t.c if c.name != "secret_sha256"))
    return [_record(r) for r in conn.execute(query.order_by(api_keys_t.c.created_at, api_keys_t.c.key_id))]


def _find(keys: Sequence[ApiKey], key_id_or_name: str, now: float) -> ApiKey:
    for key in keys:
        if key.key_id == key_id_or_name:
            return key
    named = [k for k in keys if k.name == key_id_or_name]
    active = [k for k in named if k.status(now) == "active"]
    if active:
        return active[0]
    if len(named) == 1:
        return named[0]
    if named:
        ids = ", ".join(f"{k.key_id} ({k.status(now)})" for k in named)
        raise InvalidInput(f"no active API key is named '{key_id_or_name}' and several inactive ones are: {ids}; "
                           "give the key id", field="key", got=key_id_or_name)
    shown = [f"{k.name} ({k.key_id})" for k in keys if k.status(now) == "active"]
    there = ("active keys: " + ", ".join(shown[:20]) + (f" and {len(shown) - 20} more" if len(shown) > 20 else "")
             if shown else "there are no active keys")
    raise InvalidInput(f"no API key has the id or name '{key_id_or_name[:128]}'; {there} "
                       "(shipyard keys list --all shows every key)", field="key", got=key_id_or_name)


@dataclass(frozen=True)
class _Entry:
    key: ApiKey
    secret_sha256: str
    principal: Principal


class KeyRing:
    """Every key's hash in memory, re-read from the database on a timer: what a server checks requests against.

    ``verify`` reads no database, except that a key id it does not know re-reads the keys at most once
    a second (``MISS_RELOAD_SECONDS``), so a key created a moment ago works at once. It is safe to
    call from several threads.

    Args:
        store: where the keys are.
        refresh_seconds: how often ``watch`` re-reads them: a revoked key stops working within this.
        clock: epoch seconds, for expiry and the re-read limit; tests inject their own.
    """

    def __init__(self, store: KeyStore, refresh_seconds: float, clock: Callable[[], float] = time.time) -> None:
        if not refresh_seconds > 0:
            raise ValueError(f"refresh_seconds must be positive, got {refresh_seconds}")
        self.store = store
        self.refresh_seconds = refresh_seconds
        self.clock = clock
        self._entries: dict[str, _Entry] = {}
        self._loaded_at: float | None = None  # when a read was last tried, good or not
        self._lock = threading.Lock()  # one re-read at a time

    def refresh(self) -> None:
        """Re-read every key from the database (blocking); on failure the keys held stay as they were."""
        with self._lock:
            self._load()

    def _load(self) -> None:
        self._loaded_at = self.clock()
        self._entries = {key_id: _Entry(key, digest, key.principal())
                         for key_id, (key, digest) in self.store.hashes().items()}

    def verify(self, token: str) -> Principal:
        """The principal of a valid, active key's token.

        Raises:
            Unauthenticated: ``invalid API key`` for a malformed token, an unknown key or a wrong secret
                (which one is not said); the right secret of a revoked or expired key says so.
        """
        return self._verify(parse_token(token))

    def verify_held(self, token: str) -> Principal | None:
        """``verify`` without reading the database: None for a well-formed token of a key id not held
        (an event loop then calls ``verify`` from a thread)."""
        parsed = parse_token(token)
        if parsed is not None and parsed[0] not in self._entries:
            return None
        return self._verify(parsed)

    def _verify(self, parsed: tuple[str, str] | None) -> Principal:
        if parsed is None:
            raise Unauthenticated("invalid API key")
        key_id, secret = parsed
        entry = self._entries.get(key_id) or self._reload_for(key_id)
        if entry is None or not hmac.compare_digest(hash_secret(secret), entry.secret_sha256):
            raise Unauthenticated("invalid API key")
        status = entry.key.status(self.clock())
        if status == "revoked":
            raise Unauthenticated(f"API key {entry.key.name} was revoked; ask an admin for a new key")
        if status == "expired":
            raise Unauthenticated(f"API key {entry.key.name} expired at {iso(entry.key.expires_at)}; "
                                  "ask an admin for a new key")
        return entry.principal

    def _reload_for(self, key_id: str) -> _Entry | None:
        """Re-read the keys for an unknown id, unless a read was tried less than a second ago."""
        with self._lock:
            entry = self._entries.get(key_id)  # another thread may have re-read while this one waited
            if entry is not None:
                return entry
            if self._loaded_at is not None and self.clock() - self._loaded_at < MISS_RELOAD_SECONDS:
                return None
            try:
                self._load()
            except Exception as exc:
                logger.warning("re-reading the API keys for an unknown key id failed (%s); keeping the keys "
                               "read before", exc)
                return None
            return self._entries.get(key_id)

    async def watch(self, stop: asyncio.Event) -> None:
        """Re-read the keys every ``refresh_seconds``, off the event loop, until ``stop`` is set. Never dies."""
        await every(self.refresh_seconds, stop, self._refresh_logged, "re-reading the API keys", logger)

    async def _refresh_logged(self) -> None:
        try:
            await anyio.to_thread.run_sync(self.refresh)
        except Exception as exc:
            logger.warning("re-reading the API keys failed (%s); keeping the %d keys read before",
                           exc, len(self._entries))
