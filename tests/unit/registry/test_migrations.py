"""The registry's SQLite schema: created at the newest revision, upgraded in place from 0.1."""

from __future__ import annotations

import logging
import sys
import threading
from pathlib import Path

import pytest
import sqlalchemy as sa
from tests.fixtures import registry_v01
from tests.fixtures.schema import schema_diff

from shipyard.config import Settings
from shipyard.errors import RegistryError
from shipyard.registry import Registry
from shipyard.registry.database import VERSION_TABLE, Database, _newest_file_revision
from shipyard.serving.job_store import JobStore

DB_LOGGER = "shipyard.registry.database"


def sqlite_url(home: Path) -> str:
    return Settings(home=home).resolved_registry_url


def make_v01(home: Path, *, with_jobs: bool = True) -> None:
    """A registry folder as shipyard 0.1 left it: its tables, its rows, no version table."""
    home.mkdir(parents=True)
    engine = sa.create_engine(sqlite_url(home))
    try:
        registry_v01.create(engine, with_jobs=with_jobs)
        with engine.begin() as conn:
            registry_v01.fill(conn)
    finally:
        engine.dispose()


def columns(url: str, table: str) -> dict[str, bool]:
    engine = sa.create_engine(url)
    try:
        return {c["name"]: c["nullable"] for c in sa.inspect(engine).get_columns(table)}
    finally:
        engine.dispose()


def test_a_0_1_registry_is_upgraded_in_place_and_keeps_its_data(tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    home = tmp_path / "home"
    make_v01(home)
    assert "actor" not in columns(sqlite_url(home), "shipyard_alias_history")

    with caplog.at_level(logging.INFO, logger=DB_LOGGER):
        registry = Registry.from_settings(Settings(home=home))
    try:
        registry_v01.check(registry)
        assert registry.database.revision == Database.head() == "0007"
        assert columns(sqlite_url(home), "shipyard_alias_history")["actor"] is True  # nullable
        assert JobStore(registry.database).get("job-1").result == {"ok": True}
        # the old history still drives rollback, and new moves record who made them
        back = registry.rollback(registry_v01.NAME, "champion", actor="ana")
        assert (back.previous, back.version, back.actor) == (2, 1, "ana")
        assert registry.alias_history(registry_v01.NAME)[-1].actor == "ana"
        assert schema_diff(registry.database) == []
    finally:
        registry.close()
    messages = [r.getMessage() for r in caplog.records if r.name == DB_LOGGER]
    assert "registry schema upgraded from 1 to 7" in messages


def test_a_0_1_registry_without_the_jobs_table_gains_it(tmp_path: Path) -> None:
    home = tmp_path / "home"
    make_v01(home, with_jobs=False)

    registry = Registry.from_settings(Settings(home=home))
    try:
        registry_v01.check(registry)
        jobs = JobStore(registry.database)
        jobs.add("job-2", registry_v01.NAME, callback=None)
        assert jobs.get("job-2").status == "queued"
        assert registry.database.revision == Database.head()
        assert schema_diff(registry.database) == []
    finally:
        registry.close()


def test_a_new_database_goes_straight_to_head(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger=DB_LOGGER):
        db = Database(sqlite_url(tmp_path))
    try:
        assert db.revision == Database.head()
        assert schema_diff(db) == []
    finally:
        db.close()
    messages = [r.getMessage() for r in caplog.records if r.name == DB_LOGGER]
    assert messages == [f"registry schema created at {int(Database.head())}"]


def test_opening_a_current_database_again_changes_nothing(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    home = tmp_path / "home"
    make_v01(home)
    Registry.from_settings(Settings(home=home)).close()
    db_file = home / "registry.db"
    before = db_file.read_bytes()

    caplog.clear()  # only the second open's records count (the first one's show when a CLI set INFO earlier)
    with caplog.at_level(logging.INFO, logger=DB_LOGGER):
        registry = Registry.from_settings(Settings(home=home))
    try:
        registry_v01.check(registry)
        assert registry.database.revision == Database.head()
    finally:
        registry.close()
    assert [r for r in caplog.records if r.name == DB_LOGGER] == []
    assert db_file.read_bytes() == before


def test_a_move_without_an_actor_records_none(tmp_path: Path) -> None:
    home = tmp_path / "home"
    make_v01(home)
    registry = Registry.from_settings(Settings(home=home))
    try:
        move = registry.set_alias(registry_v01.NAME, "challenger", 1)
        assert move.actor is None
        assert registry.alias_history(registry_v01.NAME, "challenger")[0].actor is None
    finally:
        registry.close()


def test_a_schema_newer_than_this_shipyard_is_refused(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path)
    Database(url).close()
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(f"UPDATE {VERSION_TABLE} SET version_num = '0999'"))
    finally:
        engine.dispose()

    with pytest.raises(RegistryError, match="revision 0999, newer than this shipyard"):
        Database(url)


def test_databases_opened_at_once_upgrade_once(tmp_path: Path) -> None:
    """Threads stand in for processes here: each Database has its own engine and connections."""
    home = tmp_path / "home"
    make_v01(home)
    url = sqlite_url(home)
    opened: list[Database] = []
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def open_db() -> None:
        start.wait()
        try:
            opened.append(Database(url))
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
    finally:
        for db in opened:
            db.close()
    registry = Registry.from_settings(Settings(home=home))
    try:
        registry_v01.check(registry)
    finally:
        registry.close()


def test_the_newest_revision_file_is_alembics_head() -> None:
    """Opening a current database compares with the newest file's revision, without importing Alembic."""
    assert _newest_file_revision() == Database.head()


def test_opening_a_current_database_does_not_need_alembic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = sqlite_url(tmp_path)
    Database(url).close()
    for name in [m for m in sys.modules if m == "alembic" or m.startswith("alembic.")]:
        monkeypatch.setitem(sys.modules, name, None)  # importing any of it now raises
    monkeypatch.setitem(sys.modules, "alembic", None)
    db = Database(url)
    try:
        assert db.revision == _newest_file_revision()
    finally:
        db.close()
