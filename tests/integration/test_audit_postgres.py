"""The audit log on PostgreSQL: concurrent writers with their own connection pools make one chain, no fork."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from shipyard.config import Settings
from shipyard.registry.database import Database
from shipyard.registry.store import SQLStore
from shipyard.rollout.policy import Arm, TrafficPolicy
from shipyard.rollout.store import TrafficStore
from shipyard.security.audit import AuditLog, record_config
from shipyard.security.tables import audit_t
from shipyard.signature import Signature, TensorSpec

pytestmark = pytest.mark.integration

WRITERS, MOVES = 4, 50


def version_record(name: str, digest: str) -> dict[str, Any]:
    sig = Signature(inputs=(TensorSpec("x", "FP64", (-1,)),), outputs=(TensorSpec("y", "FP64", (-1,)),),
                    format="columns")
    return {"name": name, "flavor": "sklearn", "digest": digest, "files": {"model.skops": digest},
            "signature": sig.to_dict()}


def test_concurrent_alias_moves_from_four_databases_chain_without_a_fork(pg_database_url: str) -> None:
    setup = Database(pg_database_url)
    try:
        store = SQLStore(setup)
        for i in range(WRITERS):  # one model per writer: the writers meet only at the audit head
            store.add_version(version_record(f"m{i}", "a" * 64))
            store.add_version(version_record(f"m{i}", "b" * 64))
        before = AuditLog(setup).head()[0]
    finally:
        setup.close()

    errors: list[BaseException] = []
    start = threading.Barrier(WRITERS)

    def writer(i: int) -> None:
        database = Database(pg_database_url)
        try:
            own = SQLStore(database)
            start.wait()
            for n in range(MOVES):
                own.set_alias(f"m{i}", "champion", 1 + n % 2)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)
        finally:
            database.close()

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(WRITERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert not any(t.is_alive() for t in threads)

    database = Database(pg_database_url)
    try:
        log = AuditLog(database, page_size=64)
        report = log.verify()
        events = list(log.entries())
        with database.connect() as conn:
            prev_hashes = [r[0] for r in conn.execute(audit_t.select().with_only_columns(audit_t.c.prev_hash))]
    finally:
        database.close()

    assert report.ok, report
    assert report.checked == before + WRITERS * MOVES == len(events)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert len(set(prev_hashes)) == len(prev_hashes)  # no two entries chained to the same one: no fork
    moves = [e for e in events if e.action == "alias.set"]
    assert sorted(e.target for e in moves) == sorted(f"m{i}@champion" for i in range(WRITERS) for _ in range(MOVES))
    interleaved = sum(1 for a, b in zip(moves, moves[1:], strict=False) if a.target != b.target)
    assert interleaved > WRITERS - 1  # the writers really ran at once (one after the other: WRITERS - 1)


def test_entries_survive_postgres_round_trips_and_an_edit_is_caught(pg_database_url: str, tmp_path: Path) -> None:
    database = Database(pg_database_url)
    try:
        TrafficStore(database).put(TrafficPolicy("fraud", (Arm("a", "champion", 0.1), Arm("b", "2", 1 / 3))),
                                   reason="ünïcode, floats and nulls")
        assert record_config(database, Settings(home=tmp_path, registry_url=pg_database_url)) is not None
        assert AuditLog(database).verify().ok  # hashes recomputed from what PostgreSQL gives back
        with database.transaction() as conn:
            conn.execute(audit_t.update().where(audit_t.c.seq == 1).values(outcome="failed"))
        report = AuditLog(database).verify()
    finally:
        database.close()
    assert not report.ok and report.first_bad == 1
