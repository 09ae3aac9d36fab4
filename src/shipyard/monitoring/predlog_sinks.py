"""Where prediction records go: one small interface, three kinds of sink, and reading them back.

* ``FileSink``    the embedded default: SQLite files under ``SHIPYARD_HOME/predictions``, rotated at a size,
                  the oldest deleted beyond a total (``shipyard logs`` reads them)
* ``StreamSink``  a broker topic through ``shipyard.streams`` (``kafka://``, ``redis://``, ``nats://``,
                  ``local://``): one JSON message per record, keyed by prediction id
* ``SqlSink``     a ``shipyard_predictions`` table in any SQLAlchemy database (``postgresql://``, ``sqlite:///``)

Every sink is written from one thread only (the prediction log's writer), so a
sink needs no locking of its own; ``write`` raises on failure and the caller
retries the same records, so writes are idempotent by prediction id where the
store allows it (the SQLite files and the SQL table ignore a record they hold).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import orjson
import sqlalchemy as sa

from shipyard.config import Settings
from shipyard.errors import ConfigError, MissingDependency
from shipyard.streams.broker import SCHEMES, Record, Sink, StreamUrl, open_sink

__all__ = [
    "SUMMARY_COLUMNS",
    "SUMMARY_INDEX",
    "TABLE",
    "FileSink",
    "PredictionRecord",
    "PredictionSink",
    "SqlSink",
    "StreamSink",
    "default_folder",
    "iso_time",
    "log_files",
    "open_prediction_sink",
    "read_files",
    "read_sql",
    "sink_kind",
]

logger = logging.getLogger(__name__)

PredictionRecord = dict[str, Any]
"""One prediction as logged: see ``shipyard.monitoring.predlog.to_record`` for its keys."""

TABLE = "shipyard_predictions"
_SQL_SCHEMES = ("postgresql", "postgres", "sqlite")
_FILE_PREFIX = "predictions-"
_COLUMNS = ("prediction_id", "request_id", "time", "model", "version", "route", "transport", "outcome",
            "error", "latency_ms", "rows", "cached", "trace_id", "shadow", "policy_revision")


class PredictionSink(Protocol):
    """A destination of prediction records, used from one thread."""

    def write(self, records: Sequence[PredictionRecord]) -> None:
        """Store ``records`` durably, in order; raise on failure (the caller retries the same records)."""

    def close(self) -> None:
        """Release connections and files (after the last ``write``)."""


def open_prediction_sink(sink: str, settings: Settings, *, max_file_bytes: int,
                         max_total_bytes: int, writer: str = "") -> PredictionSink:
    """The sink ``sink`` names: empty for the embedded files, else a stream or database URL.

    ``writer`` tells the embedded files of one process from those of the others writing the same
    folder (the workers of ``shipyard serve --workers N``: ``w0``, ``w1``, ...).

    Raises:
        ConfigError: an unknown scheme, or a URL its adapter refuses.
    """
    kind = sink_kind(sink)
    if kind == "file":
        return FileSink(default_folder(settings), max_file_bytes=max_file_bytes, max_total_bytes=max_total_bytes,
                        writer=writer)
    if kind == "sql":
        return SqlSink(sink)
    from shipyard.streams.naming import resolve_url

    return StreamSink(resolve_url(sink, settings))


def sink_kind(sink: str) -> str:
    """``file``, ``sql`` or ``stream`` for a sink setting (ConfigError for anything else)."""
    if not sink:
        return "file"
    scheme = sink.split("://", 1)[0].lower() if "://" in sink else ""
    if scheme.split("+", 1)[0] in _SQL_SCHEMES:
        return "sql"
    if scheme in SCHEMES:
        return "stream"
    raise ConfigError(f"monitoring.prediction_log.sink {sink!r}: use an empty value (files under home), a stream "
                      "URL (kafka://, redis://, nats://, local://) or a database URL (postgresql://, sqlite:///)")


def default_folder(settings: Settings) -> Path:
    return (settings.home / "predictions").resolve()


def _timestamp(record: PredictionRecord) -> float:
    return datetime.fromisoformat(str(record["time"]).replace("Z", "+00:00")).timestamp()


# -- the embedded default: rotated SQLite files -----------------------------------------------------------

_FILE_SCHEMA = """
CREATE TABLE IF NOT EXISTS predictions (
    prediction_id TEXT PRIMARY KEY,
    ts REAL NOT NULL,
    model TEXT NOT NULL,
    version INTEGER NOT NULL,
    record BLOB NOT NULL,
    outcome TEXT,
    latency_ms REAL,
    shadow INTEGER
);
"""
#: Files made with the summary columns get this index (model, time, then what a summary reads, so summaries
#: and ``shipyard logs``'s filters are answered from the index alone); older files keep (model, ts).
SUMMARY_INDEX = "predictions_by_model_summary"
_NEW_FILE_INDEX = f"CREATE INDEX IF NOT EXISTS {SUMMARY_INDEX} ON predictions (model, ts, version, outcome, " \
                  "latency_ms, shadow)"
#: Columns beside the record that traffic summaries read without decoding it (added to older files when
#: they are next written; their earlier rows have NULL there and are read from the record).
SUMMARY_COLUMNS = {"outcome": "TEXT", "latency_ms": "REAL", "shadow": "INTEGER"}


class FileSink:
    """SQLite files ``predictions-<UTC time>.db`` in ``folder``: one is written; it is closed at ``max_file_bytes``
    and a new one begun; the oldest files go once all of them pass ``max_total_bytes``.

    With ``writer`` set (a worker of ``--workers N``) the names end in ``-<writer>``: each worker
    appends to its own newest file only, and retention never deletes the file another writer is on.

    Each file holds whole JSON records plus the columns ``shipyard logs`` filters on (model, version, time).
    """

    def __init__(self, folder: Path, *, max_file_bytes: int, max_total_bytes: int, writer: str = "") -> None:
        self.folder = folder
        self.writer = writer
        self.max_file_bytes = max_file_bytes
        self.max_total_bytes = max_total_bytes
        self._conn: sqlite3.Connection | None = None
        self.path: Path | None = None
        """The file being written (None before the first write)."""

    def write(self, records: Sequence[PredictionRecord]) -> None:
        conn = self._connection()
        rows = [(r["prediction_id"], _timestamp(r), r["model"], int(r["version"]), record_json(r), r.get("outcome"),
                 r.get("latency_ms"), int(bool(r.get("shadow")))) for r in records]
        with conn:  # one transaction; a record already held (a retried write) is skipped
            conn.executemany("INSERT OR IGNORE INTO predictions (prediction_id, ts, model, version, record, outcome, "
                             "latency_ms, shadow) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
        page_count, = conn.execute("PRAGMA page_count").fetchone()
        page_size, = conn.execute("PRAGMA page_size").fetchone()
        if page_count * page_size >= self.max_file_bytes:
            self._rotate()

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def files(self) -> list[Path]:
        """The log files, oldest first."""
        return log_files(self.folder)

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            existing = [f for f in self.files() if _writer(f) == self.writer]
            # keep appending to the newest file across restarts, unless it is full
            if existing and _size(existing[-1]) < self.max_file_bytes:
                self.path = existing[-1]
            else:
                self.path = self._new_path()
            self._conn = _open(self.path)
        return self._conn

    def _new_path(self) -> Path:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
        end = f"-{self.writer}.db" if self.writer else ".db"
        path = self.folder / f"{_FILE_PREFIX}{stamp}{end}"
        n = 1
        while path.exists():  # two rotations within a microsecond
            path = self.folder / f"{_FILE_PREFIX}{stamp}-{n}{end}"
            n += 1
        return path

    def _rotate(self) -> None:
        self.close()
        self.path = self._new_path()
        self._conn = _open(self.path)
        self._enforce_retention()

    def _enforce_retention(self) -> None:
        files = self.files()
        total = sum(_size(f) for f in files)
        current = {_writer(f): f for f in files}  # each writer's newest: being written
        for old in files:
            if total <= self.max_total_bytes or old == self.path:
                break
            if current.get(_writer(old)) == old:
                continue
            total -= _size(old)
            for part in (old, old.with_name(old.name + "-wal"), old.with_name(old.name + "-shm")):
                part.unlink(missing_ok=True)
            logger.info("prediction log: deleted %s (the files passed %d bytes)", old.name, self.max_total_bytes)


def _writer(path: Path) -> str:
    """The writer a log file's name ends with (``predictions-<stamp>[-<n>][-<writer>].db``), else ""."""
    last = path.stem.rsplit("-", 1)[-1]
    return last if last[:1].isalpha() else ""


def _open(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=30, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")  # `shipyard logs` reads while the server writes
    conn.execute("PRAGMA synchronous=NORMAL")
    fresh = conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'predictions'").fetchone() is None
    conn.executescript(_FILE_SCHEMA)
    if fresh:
        conn.execute(_NEW_FILE_INDEX)
    have = {row[1] for row in conn.execute("PRAGMA table_info(predictions)")}
    for column, kind in SUMMARY_COLUMNS.items():
        if column not in have:  # a file written before these columns existed: its earlier rows stay NULL there
            conn.execute(f"ALTER TABLE predictions ADD COLUMN {column} {kind}")
    if not fresh:
        conn.execute("CREATE INDEX IF NOT EXISTS predictions_by_model ON predictions (model, ts)")
    return conn


def _size(path: Path) -> int:
    total = 0
    for part in (path, path.with_name(path.name + "-wal")):
        with contextlib.suppress(OSError):  # deleted meanwhile, or no WAL yet
            total += part.stat().st_size
    return total


def log_files(folder: Path) -> list[Path]:
    """The embedded log's files in ``folder``, oldest first (their names sort by creation time)."""
    if not folder.is_dir():
        return []
    return sorted(folder.glob(f"{_FILE_PREFIX}*.db"))


def read_files(folder: Path, model: str, *, since: float | None = None, version: int | None = None,
               limit: int = 100) -> list[PredictionRecord]:
    """The newest ``limit`` records of ``model`` in the embedded log, oldest first."""
    where = "model = ?"
    args: list[Any] = [model]
    if since is not None:
        where += " AND ts >= ?"
        args.append(since)
    if version is not None:
        where += " AND version = ?"
        args.append(version)
    found: list[PredictionRecord] = []
    for path in reversed(log_files(folder)):
        if len(found) >= limit:
            break
        try:
            conn = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=30)
        except sqlite3.Error:
            continue  # deleted by retention meanwhile
        try:
            rows = conn.execute(f"SELECT record FROM predictions WHERE {where} ORDER BY ts DESC, rowid DESC "
                                "LIMIT ?",
                                (*args, limit - len(found))).fetchall()
        except sqlite3.Error as exc:
            logger.warning("prediction log: cannot read %s: %s", path, exc)
            rows = []
        finally:
            conn.close()
        found.extend(orjson.loads(raw) for raw, in rows)
    found.reverse()
    found.sort(key=_timestamp)  # stable: records of one instant stay in the order they were written
    return found


# -- a broker topic --------------------------------------------------------------------------------------


class StreamSink:
    """Records as JSON messages (key: prediction id; headers: model, version) on a ``shipyard.streams`` Sink.

    The broker adapters are asyncio-based: this sink owns an event loop, run by
    whichever thread calls it (the prediction log's writer). After a failed send
    the adapter is closed and a new one started at the next write, so a broker
    that comes back is reconnected to.
    """

    def __init__(self, url: StreamUrl) -> None:
        self.url = url
        self._sink: Sink | None = None
        open_sink(url)  # refuse a bad URL now, not at the first write (adapters connect only in start)
        self._loop: asyncio.AbstractEventLoop | None = None

    def write(self, records: Sequence[PredictionRecord]) -> None:
        messages = [Record(value=record_json(r), key=str(r["prediction_id"]),
                           headers={"model": str(r["model"]), "version": str(r["version"])}) for r in records]
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        try:
            self._loop.run_until_complete(self._send(messages))
        except BaseException:
            self._loop.run_until_complete(self._drop())
            raise

    async def _send(self, messages: list[Record]) -> None:
        if self._sink is None:
            sink = open_sink(self.url)
            await sink.start()
            self._sink = sink
        await self._sink.send(messages)

    async def _drop(self) -> None:
        sink, self._sink = self._sink, None
        if sink is not None:
            try:
                await sink.close()
            except Exception as exc:  # the broker is down; the next write connects afresh
                logger.debug("closing %s after a failed send: %s", self.url, exc)

    def close(self) -> None:
        loop, self._loop = self._loop, None
        if loop is not None:
            try:
                loop.run_until_complete(self._drop())
            finally:
                loop.close()


# -- a database table ------------------------------------------------------------------------------------

metadata = sa.MetaData()
predictions_table = sa.Table(
    TABLE, metadata,
    sa.Column("prediction_id", sa.String(64), primary_key=True),
    sa.Column("request_id", sa.String(256), nullable=False),
    sa.Column("time", sa.DateTime(timezone=True), nullable=False),
    sa.Column("model", sa.String(256), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("route", sa.String(256), nullable=False),
    sa.Column("transport", sa.String(32), nullable=False),
    sa.Column("outcome", sa.String(64), nullable=False),
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("latency_ms", sa.Float, nullable=False),
    sa.Column("rows", sa.Integer, nullable=False),
    sa.Column("cached", sa.Boolean, nullable=False),
    sa.Column("trace_id", sa.String(64), nullable=True),
    sa.Column("shadow", sa.Boolean, nullable=False, default=False),
    sa.Column("policy_revision", sa.Integer, nullable=True),
    sa.Column("inputs", sa.JSON, nullable=True),
    sa.Column("outputs", sa.JSON, nullable=True),
    sa.Index("shipyard_predictions_by_model", "model", "time"),
)


def _engine(url: str) -> sa.Engine:
    if url.startswith(("postgresql://", "postgres://")):
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    try:
        # orjson for the JSON columns: it writes NaN and infinities as null, which PostgreSQL's json needs
        return sa.create_engine(url, future=True, pool_pre_ping=True,
                                json_serializer=lambda value: record_json(value).decode())
    except ImportError as exc:
        raise MissingDependency(exc.name or "psycopg", "postgres") from exc


class SqlSink:
    """Rows of the ``shipyard_predictions`` table (created if missing), one transaction per write.

    The table is made with SQLAlchemy's ``create_all`` at the first write (so a
    database that is down does not stop a server from starting).
    """

    def __init__(self, url: str) -> None:
        self.engine = _engine(url)
        self._ready = False

    def write(self, records: Sequence[PredictionRecord]) -> None:
        if not self._ready:
            metadata.create_all(self.engine, checkfirst=True)
            self._ready = True
        rows = [_row(r) for r in records]
        dialect = self.engine.dialect.name
        stmt: Any
        if dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            stmt = pg_insert(predictions_table).on_conflict_do_nothing(index_elements=["prediction_id"])
        elif dialect == "sqlite":
            from sqlalchemy.dialects.sqlite import insert as sqlite_insert

            stmt = sqlite_insert(predictions_table).on_conflict_do_nothing(index_elements=["prediction_id"])
        else:
            stmt = predictions_table.insert()
        with self.engine.begin() as conn:
            conn.execute(stmt, rows)

    def close(self) -> None:
        self.engine.dispose()


def _row(record: PredictionRecord) -> dict[str, Any]:
    row = {c: record.get(c) for c in _COLUMNS}
    row["shadow"] = bool(row["shadow"])  # records written before shadows existed have none
    row["time"] = datetime.fromtimestamp(_timestamp(record), UTC)
    row["inputs"], row["outputs"] = record.get("inputs"), record.get("outputs")
    return row


def read_sql(url: str, model: str, *, since: float | None = None, version: int | None = None,
             limit: int = 100) -> list[PredictionRecord]:
    """The newest ``limit`` records of ``model`` in the table at ``url``, oldest first."""
    engine = _engine(url)
    try:
        t = predictions_table
        query = sa.select(t).where(t.c.model == model).order_by(t.c.time.desc()).limit(limit)
        if since is not None:
            query = query.where(t.c.time >= datetime.fromtimestamp(since, UTC))
        if version is not None:
            query = query.where(t.c.version == version)
        with engine.connect() as conn:
            if not sa.inspect(conn).has_table(TABLE):
                return []
            rows = list(conn.execute(query).mappings())
    finally:
        engine.dispose()
    return [_from_row(dict(r)) for r in reversed(rows)]


def _from_row(row: dict[str, Any]) -> PredictionRecord:
    at: datetime = row["time"]
    if at.tzinfo is None:  # SQLite keeps no zone; every stored time is UTC
        at = at.replace(tzinfo=UTC)
    record = {str(k): v for k, v in row.items()}  # plain str keys (SQLAlchemy's are a subclass)
    record["time"] = iso_time(at.timestamp())
    return record


def record_json(record: Any) -> bytes:
    """A record (or part of one) as JSON: NaN and infinities become null."""
    return orjson.dumps(record, option=orjson.OPT_SERIALIZE_NUMPY)


def iso_time(seconds: float) -> str:
    """ISO-8601 UTC to the microsecond: ``2024-05-01T12:00:00.123456Z``."""
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")

