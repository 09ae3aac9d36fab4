"""API keys: tokens, the store (validation, duplicate names, audit in the same transaction) and the ring."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from shipyard.errors import InvalidInput, InvalidOption, Unauthenticated
from shipyard.registry.database import Database
from shipyard.security.audit import GENESIS, entry_hash
from shipyard.security.keys import KeyRing, KeyStore, hash_secret, parse_expiry, parse_token
from shipyard.security.tables import api_keys_t, audit_head_t, audit_t

T0 = 1_900_000_000.0


class Clock:
    """Epoch seconds that move only when a test says."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class CountingStore(KeyStore):
    """A real store that counts its full reads: what a ring costs the database."""

    reads = 0

    def hashes(self) -> dict[str, tuple[object, str]]:  # type: ignore[override]
        self.reads += 1
        return super().hashes()  # type: ignore[return-value]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "registry.db"


@pytest.fixture
def database(db_path: Path) -> Iterator[Database]:
    db = Database(f"sqlite:///{db_path}")
    try:
        yield db
    finally:
        db.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(database: Database, clock: Clock) -> KeyStore:
    return KeyStore(database, clock=clock)


def audit_rows(database: Database) -> list[sa.Row[tuple[object, ...]]]:
    with database.connect() as conn:
        return list(conn.execute(sa.select(audit_t).order_by(audit_t.c.seq)))


def key_works_across_databases_until_revoked(writer: Database, reader: Database) -> None:
    """A key made through one Database verifies on a ring over another; once revoked, a refresh refuses it."""
    clock = Clock()
    key, token = KeyStore(writer, clock=clock).create("ci", ["predict"], models=["fraud"])
    ring = KeyRing(KeyStore(reader, clock=clock), refresh_seconds=5, clock=clock)
    ring.refresh()
    principal = ring.verify(token)
    assert (principal.name, principal.kind, principal.key_id) == ("ci", "key", key.key_id)
    assert principal.scopes == frozenset({"predict"}) and principal.models == frozenset({"fraud"})
    KeyStore(writer, clock=clock).revoke("ci")
    assert ring.verify(token).key_id == key.key_id  # the ring holds what it read until its next refresh
    ring.refresh()
    with pytest.raises(Unauthenticated, match="API key ci was revoked"):
        ring.verify(token)


# -- tokens -------------------------------------------------------------------------------------


def test_token_is_prefix_key_id_and_secret_and_parses_back(store: KeyStore) -> None:
    key, token = store.create("ci", ["read"])
    parsed = parse_token(token)
    assert parsed is not None
    key_id, secret = parsed
    assert token == f"sy_{key_id}_{secret}" and key_id == key.key_id
    assert len(key_id) == 12 and int(key_id, 16) >= 0 and key_id == key_id.lower()
    assert len(secret) == 43 and "=" not in secret  # 32 bytes, base64url without padding


@pytest.mark.parametrize("token", [
    "", "sy_", "Bearer sy_0123456789ab_" + "a" * 43, "sy_0123456789AB_" + "a" * 43, "sy_0123456789ab_" + "a" * 42,
    "sy_0123456789ab_" + "a" * 44, "sy_0123456789ab_" + "a" * 42 + "=", "xy_0123456789ab_" + "a" * 43,
    "sy_0123456789ab_" + "a" * 43 + "\n",
])
def test_malformed_tokens_do_not_parse(token: str) -> None:
    assert parse_token(token) is None


def test_two_keys_never_share_an_id_or_secret(store: KeyStore) -> None:
    tokens = [store.create(f"k{i}", ["read"])[1] for i in range(20)]
    parsed = [parse_token(t) for t in tokens]
    assert len({p[0] for p in parsed if p}) == 20 and len({p[1] for p in parsed if p}) == 20


# -- the store ----------------------------------------------------------------------------------


def test_only_the_secrets_sha256_is_stored_nor_logged(store: KeyStore, database: Database, db_path: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    _, token = store.create("ci", ["predict", "read"], models=["fraud"], rate_per_second=5)
    store.revoke("ci")
    parsed = parse_token(token)
    assert parsed is not None
    secret = parsed[1]
    database.close()
    conn = sqlite3.connect(db_path)
    try:
        dump = "\n".join(conn.iterdump())
    finally:
        conn.close()
    assert hash_secret(secret) in dump  # the dump is of the right database
    assert secret not in dump and secret[:16] not in dump
    assert secret not in caplog.text and "ci" in caplog.text


def test_create_writes_the_key_and_its_audit_row(store: KeyStore, database: Database) -> None:
    key, _ = store.create("ci", ["read", "predict"], models=["fraud", "churn"], expires_at=T0 + 3600,
                          rate_per_second=2.5)
    assert key.scopes == ("predict", "read") and key.models == ("churn", "fraud")  # in SCOPES' order; sorted
    assert store.get(key.key_id) == key and store.get("ci") == key
    [row] = audit_rows(database)
    assert (row.action, row.target, row.outcome, row.at) == ("key.create", f"key:{key.key_id}", "ok", T0)
    assert row.details == {"name": "ci", "scopes": ["predict", "read"], "models": ["churn", "fraud"],
                           "expires_at": T0 + 3600, "rate_per_second": 2.5}
    assert row.prev_hash == GENESIS and row.hash == entry_hash(
        row.seq, row.at, row.actor, row.source, row.action, row.target, row.outcome, row.details, row.prev_hash)


def test_a_create_whose_audit_row_fails_leaves_neither(store: KeyStore, database: Database) -> None:
    with database.transaction() as conn:  # the audit insert fails after the key's insert ran
        conn.exec_driver_sql("CREATE TRIGGER refuse_audit BEFORE INSERT ON shipyard_audit "
                             "BEGIN SELECT RAISE(ABORT, 'audit refused'); END")
    with pytest.raises(sa.exc.DatabaseError, match="audit refused"):
        store.create("ci", ["read"])
    with database.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(api_keys_t)).scalar_one() == 0
        assert conn.execute(sa.select(audit_head_t.c.seq)).scalar_one() == 0
    assert audit_rows(database) == [] and store.list() == []
    with database.transaction() as conn:
        conn.exec_driver_sql("DROP TRIGGER refuse_audit")
    key, _ = store.create("ci", ["read"])
    assert [k.key_id for k in store.list()] == [key.key_id] and len(audit_rows(database)) == 1


def test_revoke_is_audited_once_and_the_key_listed_as_revoked(store: KeyStore, database: Database,
                                                              clock: Clock) -> None:
    key, _ = store.create("ci", ["read"])
    clock.now += 10
    revoked = store.revoke("ci")
    assert revoked.revoked_at == T0 + 10 and revoked.status(clock.now) == "revoked"
    assert store.revoke(key.key_id) == revoked  # again: nothing changes, nothing is recorded
    assert [(r.action, r.target) for r in audit_rows(database)] == [("key.create", f"key:{key.key_id}"),
                                                                     ("key.revoke", f"key:{key.key_id}")]
    assert store.list() == [revoked] and store.list(include_revoked=False) == []


def test_an_active_name_cannot_be_taken_twice_but_a_revoked_ones_can(store: KeyStore, database: Database) -> None:
    first, _ = store.create("ci", ["read"])
    with pytest.raises(InvalidInput, match=f"an active API key is named 'ci' already \\(id {first.key_id}\\)"):
        store.create("ci", ["predict"])
    assert len(audit_rows(database)) == 1  # the refusal recorded nothing
    store.revoke("ci")
    second, _ = store.create("ci", ["predict"])
    assert store.get("ci") == second  # the name finds the active key
    store.revoke("ci")
    with pytest.raises(InvalidInput, match="several inactive ones are") as info:
        store.get("ci")
    assert first.key_id in str(info.value) and second.key_id in str(info.value)


def test_an_expired_keys_name_can_be_reused_and_found_when_alone(store: KeyStore, clock: Clock) -> None:
    old, _ = store.create("ci", ["read"], expires_at=T0 + 60)
    clock.now += 61
    assert store.get("ci") == old  # the only key of that name, though expired
    new, _ = store.create("ci", ["read"])
    assert store.get("ci") == new


def test_unknown_key_names_the_active_keys(store: KeyStore) -> None:
    with pytest.raises(InvalidInput, match="no API key has the id or name 'nope'; there are no active keys"):
        store.get("nope")
    a, _ = store.create("ci", ["read"])
    with pytest.raises(InvalidInput, match=f"active keys: ci \\({a.key_id}\\)"):
        store.revoke("nope")


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"scopes": ["predict", "write"]}, "unknown scope 'write'; valid scopes: predict, feedback, read, admin"),
    ({"scopes": []}, "a key needs at least one scope; valid scopes: predict, feedback, read, admin"),
    ({"name": "ci key"}, "invalid key name 'ci key'"),
    ({"name": "-ci"}, "invalid key name '-ci'"),
    ({"models": ["fraud", "../etc"]}, "invalid model name '../etc'"),
    ({"models": []}, "models is empty"),
    ({"rate_per_second": -1.0}, "rate_per_second must be a number >= 0, got -1.0"),
    ({"rate_per_second": float("nan")}, "rate_per_second must be a number >= 0, got nan"),
    ({"expires_at": T0}, "the expiry 2030-03-17T17:46:40Z is not in the future"),
])
def test_bad_keys_are_refused_with_what_is_wrong(store: KeyStore, database: Database, kwargs: dict[str, object],
                                                message: str) -> None:
    args: dict[str, object] = {"name": "ci", "scopes": ["read"], **kwargs}
    with pytest.raises(InvalidInput, match=message.replace("(", r"\(").replace(")", r"\)")):
        store.create(**args)  # type: ignore[arg-type]
    assert store.list() == [] and audit_rows(database) == []


def test_expiry_parses_durations_and_dates() -> None:
    assert parse_expiry("30d", T0) == T0 + 30 * 86400
    assert parse_expiry("12h", T0) == T0 + 12 * 3600
    assert parse_expiry("2w", T0) == T0 + 14 * 86400
    midnight = datetime(2027, 1, 31, tzinfo=UTC).timestamp()
    assert parse_expiry("2027-01-31", T0) == midnight  # 00:00 UTC
    assert parse_expiry("2027-01-31T12:00:00+02:00", T0) == midnight + 10 * 3600
    with pytest.raises(InvalidOption, match="--expires 'soon': give a duration"):
        parse_expiry("soon", T0)


# -- the ring -----------------------------------------------------------------------------------


def test_ring_refuses_bad_tokens_without_saying_why(store: KeyStore, clock: Clock) -> None:
    key, token = store.create("ci", ["read"])
    ring = KeyRing(store, refresh_seconds=5, clock=clock)
    ring.refresh()
    parsed = parse_token(token)
    assert parsed is not None
    secret = parsed[1]
    wrong_secret = f"sy_{key.key_id}_{'A' if secret[0] != 'A' else 'B'}{secret[1:]}"
    unknown_id = f"sy_{'0' * 12 if key.key_id != '0' * 12 else '1' * 12}_{secret}"
    for bad in (wrong_secret, unknown_id, "sy_nonsense", token + "x", ""):
        with pytest.raises(Unauthenticated) as info:
            ring.verify(bad)
        assert str(info.value) == "invalid API key"
    assert ring.verify(token).name == "ci"


def test_ring_refuses_an_expired_key_saying_when(store: KeyStore, clock: Clock) -> None:
    _, token = store.create("ci", ["read"], expires_at=T0 + 60)
    ring = KeyRing(store, refresh_seconds=5, clock=clock)
    assert ring.verify(token).name == "ci"  # first use reads the keys
    clock.now = T0 + 60
    with pytest.raises(Unauthenticated, match="API key ci expired at 2030-03-17T17:47:40Z"):
        ring.verify(token)


def test_ring_reads_the_database_at_most_once_a_second_for_unknown_ids(database: Database, clock: Clock) -> None:
    store = CountingStore(database, clock=clock)
    ring = KeyRing(store, refresh_seconds=60, clock=clock)
    ring.refresh()
    assert store.reads == 1
    clock.now += 0.2
    _, token = store.create("new", ["predict"])  # made after the ring's read
    made_up = [f"sy_{i:012x}_{'a' * 43}" for i in range(50)]
    clock.now += 0.5
    for bad in [*made_up, token]:
        with pytest.raises(Unauthenticated, match="invalid API key"):
            ring.verify(bad)
    assert store.reads == 1  # under a second since the last read: no read at all
    clock.now = T0 + 1.0
    assert ring.verify(token).name == "new"  # a second on: the unknown id re-reads, and the new key works
    assert store.reads == 2
    for bad in made_up:
        with pytest.raises(Unauthenticated):
            ring.verify(bad)
    assert store.reads == 2
    clock.now += 1.0
    with pytest.raises(Unauthenticated):
        ring.verify(made_up[0])
    assert store.reads == 3


def test_ring_verifies_a_key_made_a_moment_ago_through_another_database(db_path: Path) -> None:
    writer, reader = Database(f"sqlite:///{db_path}"), Database(f"sqlite:///{db_path}")
    try:
        key_works_across_databases_until_revoked(writer, reader)
    finally:
        writer.close()
        reader.close()


def test_a_failed_refresh_keeps_the_keys_read_before(store: KeyStore, database: Database, clock: Clock,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    _, token = store.create("ci", ["read"])
    ring = KeyRing(store, refresh_seconds=5, clock=clock)
    ring.refresh()
    with database.transaction() as conn:
        conn.exec_driver_sql("ALTER TABLE shipyard_api_keys RENAME TO moved_away")
    with pytest.raises(sa.exc.OperationalError):
        ring.refresh()
    assert ring.verify(token).name == "ci"
    clock.now += 5  # an unknown id's re-read fails too: a warning, and the same refusal
    with caplog.at_level(logging.WARNING, logger="shipyard.security.keys"), pytest.raises(
            Unauthenticated, match="invalid API key"):
        ring.verify(f"sy_{'0' * 12}_{'a' * 43}")
    assert "re-reading the API keys for an unknown key id failed" in caplog.text


@pytest.mark.anyio
async def test_watch_rereads_until_stopped_and_survives_failed_reads(
        store: KeyStore, database: Database, clock: Clock, caplog: pytest.LogCaptureFixture) -> None:
    _, token = store.create("ci", ["read"])
    ring = KeyRing(store, refresh_seconds=0.01, clock=clock)
    ring.refresh()
    stop = asyncio.Event()
    watching = asyncio.create_task(ring.watch(stop))
    try:
        store.revoke("ci")
        async with asyncio.timeout(10):
            while True:  # the watch's next read sees the revocation
                try:
                    ring.verify(token)
                except Unauthenticated:
                    break
                await asyncio.sleep(0.005)
        with caplog.at_level(logging.WARNING, logger="shipyard.security.keys"):
            with database.transaction() as conn:
                conn.exec_driver_sql("ALTER TABLE shipyard_api_keys RENAME TO moved_away")
            async with asyncio.timeout(10):
                while "re-reading the API keys failed" not in caplog.text:
                    await asyncio.sleep(0.005)
        assert not watching.done()
        with pytest.raises(Unauthenticated, match="API key ci was revoked"):
            ring.verify(token)  # the last good read still holds
    finally:
        stop.set()
        await asyncio.wait_for(watching, 10)


def test_ring_needs_a_positive_refresh_interval(store: KeyStore) -> None:
    with pytest.raises(ValueError, match="refresh_seconds must be positive"):
        KeyRing(store, refresh_seconds=0)
