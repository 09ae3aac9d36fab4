"""A registry database made by shipyard 0.1 on a real PostgreSQL server, opened by this shipyard."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import pytest
import sqlalchemy as sa
from tests.fixtures import registry_v01
from tests.fixtures.schema import schema_diff

from shipyard.config import Settings
from shipyard.registry import Registry
from shipyard.registry.database import Database
from shipyard.serving.job_store import JobStore

pytestmark = pytest.mark.integration

DB_LOGGER = "shipyard.registry.database"


def make_v01(url: str, *, with_jobs: bool = True) -> None:
    engine = sa.create_engine(url)
    try:
        registry_v01.create(engine, with_jobs=with_jobs)
        with engine.begin() as conn:
            registry_v01.fill(conn)
    finally:
        engine.dispose()


def open_registry(url: str, tmp_path: Path) -> Registry:
    return Registry.from_settings(Settings(home=tmp_path / "home", registry_url=url,
                                           artifacts=str(tmp_path / "artifacts")))


def test_a_0_1_postgres_registry_is_upgraded_in_place(pg_database_url: str, tmp_path: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    make_v01(pg_database_url)

    with caplog.at_level(logging.INFO, logger=DB_LOGGER):
        registry = open_registry(pg_database_url, tmp_path)
    try:
        registry_v01.check(registry)
        assert registry.store.dialect == "postgresql"
        assert registry.database.revision == Database.head()
        assert JobStore(registry.database).get("job-1").result == {"ok": True}
        move = registry.set_alias(registry_v01.NAME, "champion", 1, actor="ana")
        assert registry.alias_history(registry_v01.NAME)[-1] == move
        assert move.actor == "ana"
        assert schema_diff(registry.database) == []
    finally:
        registry.close()
    assert "registry schema upgraded from 1 to 7" in [r.getMessage() for r in caplog.records if r.name == DB_LOGGER]

    caplog.clear()
    with caplog.at_level(logging.INFO, logger=DB_LOGGER):
        again = open_registry(pg_database_url, tmp_path)
    try:
        assert [m.actor for m in again.alias_history(registry_v01.NAME)] == [None, None, "ana"]
    finally:
        again.close()
    assert [r for r in caplog.records if r.name == DB_LOGGER] == []


def test_a_0_1_postgres_registry_without_the_jobs_table_gains_it(pg_database_url: str, tmp_path: Path) -> None:
    make_v01(pg_database_url, with_jobs=False)

    registry = open_registry(pg_database_url, tmp_path)
    try:
        registry_v01.check(registry)
        jobs = JobStore(registry.database)
        jobs.add("job-2", registry_v01.NAME, callback=None)
        assert jobs.get("job-2").status == "queued"
        assert schema_diff(registry.database) == []
    finally:
        registry.close()


@pytest.mark.parametrize("legacy", [False, True], ids=["new", "0.1"])
def test_postgres_databases_opened_at_once_migrate_once(pg_database_url: str, legacy: bool) -> None:
    if legacy:
        make_v01(pg_database_url)
    opened: list[Database] = []
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def open_db() -> None:
        start.wait()
        try:
            opened.append(Database(pg_database_url))
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=open_db) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert errors == []
        assert [db.revision for db in opened] == [Database.head()] * 4
        assert schema_diff(opened[0]) == []
    finally:
        for db in opened:
            db.close()
