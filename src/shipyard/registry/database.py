"""The SQL database behind the registry: one engine, its transactions and its schema version.

Every table shipyard keeps in SQL (models, versions, aliases, asynchronous jobs, and
what later releases add) lives in one database, SQLite under ``SHIPYARD_HOME`` or
PostgreSQL. ``Database`` owns the engine and brings the schema up to date when it
opens, with the Alembic revisions shipped in ``shipyard/registry/migrations/``.

A registry made before schema versions were recorded (shipyard 0.1 created its
tables with ``create_all``) has the tables of revision 0001 and no version table:
it is recognised as revision 0001 and upgraded in place, its rows untouched.

Two processes opening the same database at once must not both migrate it, so the
upgrade runs under a lock: on SQLite the database's write lock (``BEGIN IMMEDIATE``),
on PostgreSQL a transaction-scoped advisory lock. The loser waits, then finds the
schema current and does nothing.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine

from shipyard.errors import RegistryError

if TYPE_CHECKING:
    from alembic.config import Config

logger = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).with_name("migrations")
VERSION_TABLE = "shipyard_schema_version"
"""Alembic's version table, named for shipyard so it cannot collide with a user's own
``alembic_version`` in a shared PostgreSQL database."""
BASELINE = "0001"
"""The revision whose tables shipyard 0.1 created without recording a version."""
BASELINE_TABLES = ("shipyard_models", "shipyard_versions", "shipyard_aliases", "shipyard_alias_history", "async_jobs")
_LEGACY_MARKER = "shipyard_models"
# pg_advisory_xact_lock key: any constant shared by every shipyard process ("shipyard" in ASCII)
_PG_LOCK_KEY = 0x73686970796172
_WRITE_FLAG = "shipyard_write"
_REVISION_LINE = re.compile(r'^revision = "([0-9A-Za-z_]+)"$', re.MULTILINE)
_version_table = sa.table(VERSION_TABLE, sa.column("version_num", sa.String))


class Database:
    """An open SQL database at its newest schema.

    Args:
        url: a SQLAlchemy URL; ``postgresql://`` is read as ``postgresql+psycopg://``.

    Raises:
        MissingDependency: a PostgreSQL URL without the ``postgres`` extra installed.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        kwargs: dict[str, Any] = {"future": True}
        if url.startswith("sqlite"):
            kwargs["connect_args"] = {"timeout": 30, "check_same_thread": False}
        elif url.startswith("postgresql://"):
            url = "postgresql+psycopg://" + url[len("postgresql://"):]
        try:
            self.engine: Engine = sa.create_engine(url, **kwargs)
        except ImportError as exc:
            from shipyard.errors import MissingDependency

            raise MissingDependency(exc.name or "psycopg", "postgres") from exc
        self.dialect: str = self.engine.dialect.name
        if self.dialect == "sqlite":
            _sqlite_immediate(self.engine)
        try:
            self.upgrade()
        except BaseException:
            self.engine.dispose()
            raise

    def close(self) -> None:
        """Close every pooled connection (the engine reconnects if used again)."""
        self.engine.dispose()

    def connect(self) -> AbstractContextManager[Connection]:
        """A connection for reads: on SQLite a deferred transaction, which runs beside a writer."""
        return self.engine.connect()

    def transaction(self) -> AbstractContextManager[Connection]:
        """A write transaction: committed when the block ends, rolled back if it raises.

        On SQLite it takes the database's write lock at BEGIN, so concurrent writers queue
        instead of failing at commit.
        """
        return self._tx()

    @contextmanager
    def _tx(self) -> Iterator[Connection]:
        with self.engine.connect() as conn:
            conn.info[_WRITE_FLAG] = True  # info lives on the pooled DBAPI connection: reset below
            try:
                with conn.begin():
                    yield conn
            finally:
                conn.info.pop(_WRITE_FLAG, None)

    # -- schema ----------------------------------------------------------------------------

    @property
    def revision(self) -> str | None:
        """The schema revision recorded in the database (None before any)."""
        with self.connect() as conn:
            return _current(conn)

    @staticmethod
    def head() -> str:
        """The newest schema revision this shipyard knows."""
        from alembic.script import ScriptDirectory

        head: str | None = ScriptDirectory.from_config(_config()).get_current_head()
        assert head is not None, "shipyard ships at least one schema revision"
        return head

    def upgrade(self) -> None:
        """Bring the schema to the newest revision; a no-op when it is there already.

        Runs on open. Checks without a lock first, so opening a current database (even a
        read-only SQLite file) writes nothing. Alembic (a third of a second and 10 MB) is
        imported only when the recorded revision is not the newest file's.
        """
        with self.connect() as conn:
            current = _current(conn)
        if current is not None and current == _newest_file_revision():
            return
        from alembic import command
        from alembic.script import ScriptDirectory

        script = ScriptDirectory.from_config(_config())
        head = self.head()
        if current == head:
            return
        if current is not None and current not in {s.revision for s in script.walk_revisions()}:
            raise RegistryError(
                f"the registry database is at schema revision {current}, newer than this shipyard knows "
                f"(up to {head}): upgrade shipyard to open it"
            )
        with self.transaction() as conn:
            if self.dialect == "postgresql":
                conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_PG_LOCK_KEY)))
            start = _current(conn)
            if start == head:
                return  # another process upgraded it while this one waited for the lock
            cfg = _config(conn)
            tables = set(sa.inspect(conn).get_table_names())
            if start is None and _LEGACY_MARKER in tables:
                start = BASELINE
                if tables.issuperset(BASELINE_TABLES):
                    command.stamp(cfg, BASELINE)
                else:
                    # e.g. async_jobs, made only once a server took asynchronous requests;
                    # the baseline revision creates just the tables that are missing
                    command.upgrade(cfg, BASELINE)
                logger.info("registry made before schema versions: recorded as schema %s", _number(BASELINE))
            command.upgrade(cfg, "head")
        if start is None:
            logger.info("registry schema created at %s", _number(head))
        else:
            logger.info("registry schema upgraded from %s to %s", _number(start), _number(head))


def _newest_file_revision() -> str | None:
    """The revision the highest-numbered file in ``migrations/versions`` declares (``rNNNN_*.py``).

    What a current database records, read without Alembic: a database at this revision is at
    the head, since every revision file names its predecessor and the numbers only grow (a unit
    test checks that this is Alembic's head). None when no file says it plainly.
    """
    files = sorted(MIGRATIONS.joinpath("versions").glob("r[0-9][0-9][0-9][0-9]_*.py"))
    if not files:
        return None
    match = _REVISION_LINE.search(files[-1].read_text(encoding="utf-8"))
    return match.group(1) if match else None


def _config(conn: Connection | None = None) -> Config:
    """Alembic's configuration, built in code: users need no alembic.ini."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = conn
    cfg.attributes["version_table"] = VERSION_TABLE
    return cfg


def _current(conn: Connection) -> str | None:
    """The revision recorded in the version table, read as Alembic reads it (None: no table, no row)."""
    if not sa.inspect(conn).has_table(VERSION_TABLE):
        return None
    rows = conn.execute(sa.select(_version_table.c.version_num)).scalars().all()
    if len(rows) > 1:  # Alembic records one row per head; shipyard's history has a single branch
        raise RegistryError(f"the registry database records several schema heads: {', '.join(sorted(rows))}")
    return rows[0] if rows else None


def _number(revision: str) -> int | str:
    return int(revision) if revision.isdigit() else revision


def _sqlite_immediate(engine: Engine) -> None:
    """SQLite: WAL, foreign keys, a busy timeout, and the write lock taken at BEGIN."""

    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn: Any, _rec: Any) -> None:
        dbapi_conn.isolation_level = None  # let SQLAlchemy's 'begin' event issue BEGIN
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        # Writers lock at BEGIN; readers use a plain deferred transaction (WAL lets them run
        # beside a writer, and a read-only database file stays readable).
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.info.get(_WRITE_FLAG) else "BEGIN")
