"""The embedded broker: durable streams with consumer groups in one SQLite file, no server to run.

``local://NAME[?path=/path/to/streams.db&ack_wait=30&retention_hours=168]``

What it is for: the default of asynchronous HTTP requests when no broker is
configured, single-machine pipelines, and trying ``shipyard stream`` before a
Kafka/Redis/NATS cluster exists. Several processes on one machine may share the
file (SQLite WAL, writers serialized by ``BEGIN IMMEDIATE``); it is not for many
machines (use a real broker for that).

* ``path``: the database file; default ``SHIPYARD_HOME/streams.db``.
* ``ack_wait``: seconds a fetched message stays reserved for its consumer; after
  that, unacknowledged, it is handed to any consumer of the group again (same id).
* ``retention_hours``: messages older than this are deleted (checked now and then
  by writers); default 168 (a week).

Semantics mirror the real brokers: a group starts at the beginning of the stream;
``Message.id`` is the message's sequence number (increasing, stable); ``key`` and
``headers`` are stored as written. A killed consumer's messages come back after
``ack_wait``. Durability is SQLite's with ``synchronous=NORMAL`` in WAL mode: a
committed send survives the process dying; the last transactions may not survive
the machine losing power.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio.to_thread
import orjson

from shipyard.streams.broker import BrokerError, Message, Record, Sink, Source, StreamUrl

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    stream TEXT NOT NULL,
    key TEXT,
    value BLOB NOT NULL,
    headers BLOB,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_by_stream ON messages (stream, seq);
CREATE TABLE IF NOT EXISTS cursors (
    stream TEXT NOT NULL,
    grp TEXT NOT NULL,
    last_seq INTEGER NOT NULL,
    PRIMARY KEY (stream, grp)
);
CREATE TABLE IF NOT EXISTS pending (
    stream TEXT NOT NULL,
    grp TEXT NOT NULL,
    seq INTEGER NOT NULL,
    consumer TEXT NOT NULL,
    deadline REAL NOT NULL,
    deliveries INTEGER NOT NULL,
    PRIMARY KEY (stream, grp, seq)
);
"""
_OPTIONS = {"path", "ack_wait", "retention_hours"}
# First and longest sleep between polls of an empty stream. Each poll wakes a thread, and in a serving
# process (asynchronous requests) every wake costs the request path: a model that releases the GIL often
# hands it to the waking thread and back many times. The pause grows while the stream stays empty, across
# fetches (a consumer fetches again at once when one comes back empty), so an idle stream is looked at 4
# times a second; the first message found brings it back to the shortest.
_POLL_SECONDS = (0.002, 0.25)
_TRIM_EVERY = 500  # sends between retention checks


def default_path(home: Path) -> Path:
    return home / "streams.db"


class _Database:
    """One connection per (process, file), shared by the sources and sinks of this process."""

    _open: dict[str, _Database] = {}
    _guard = threading.Lock()

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.lock = threading.Lock()
        self.conn = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.executescript(_SCHEMA)
        self.users = 0
        self.sends = 0

    @classmethod
    def acquire(cls, path: Path) -> _Database:
        key = f"{os.getpid()}:{path.resolve()}"
        with cls._guard:
            db = cls._open.get(key)
            if db is None:
                db = cls._open[key] = _Database(path)
            db.users += 1
            return db

    def release(self) -> None:
        with self._guard:
            self.users -= 1
            if self.users == 0:
                self._open.pop(f"{os.getpid()}:{self.path.resolve()}", None)
                self.conn.close()

    def write(self, fn: Any, *args: Any) -> Any:
        """Run ``fn(conn, *args)`` in one IMMEDIATE transaction (writers of all processes serialize here)."""
        with self.lock:
            try:
                self.conn.execute("BEGIN IMMEDIATE")
                try:
                    out = fn(self.conn, *args)
                except BaseException:
                    self.conn.execute("ROLLBACK")
                    raise
                self.conn.execute("COMMIT")
                return out
            except sqlite3.Error as exc:
                raise BrokerError(f"embedded stream database {self.path}: {exc}") from exc

    def read(self, sql: str, *args: Any) -> list[Any]:
        with self.lock:
            try:
                return self.conn.execute(sql, args).fetchall()
            except sqlite3.Error as exc:
                raise BrokerError(f"embedded stream database {self.path}: {exc}") from exc


def _path(url: StreamUrl) -> Path:
    raw = url.options.get("path")
    if raw:
        return Path(raw)
    from shipyard.config import Settings

    return default_path(Settings.from_env().home)


class LocalSource(Source):
    def __init__(self, url: StreamUrl, group: str, consumer: str) -> None:
        url.refuse_unknown(_OPTIONS)
        self.url = url
        self.group = group
        self.consumer = consumer
        self.ack_wait = url.float_option("ack_wait", 30.0)
        self._pause = _POLL_SECONDS[0]
        self._db: _Database | None = None

    @property
    def db(self) -> _Database:
        if self._db is None:
            raise BrokerError(f"{self.url} is not started")
        return self._db

    async def start(self) -> None:
        self._db = await anyio.to_thread.run_sync(_Database.acquire, _path(self.url))
        await anyio.to_thread.run_sync(self.db.write, self._join)

    def _join(self, conn: sqlite3.Connection) -> None:
        conn.execute(
            "INSERT OR IGNORE INTO cursors (stream, grp, last_seq) VALUES (?, ?, 0)", (self.url.topic, self.group)
        )

    async def fetch(self, max_messages: int, timeout: float) -> list[Message]:
        deadline = time.monotonic() + timeout
        while True:
            got: list[Message] = await anyio.to_thread.run_sync(self._poll, max_messages)
            if got:
                self._pause = _POLL_SECONDS[0]
                return got
            left = deadline - time.monotonic()
            if left <= 0:
                return got
            await asyncio.sleep(min(self._pause, left))
            self._pause = min(self._pause * 2, _POLL_SECONDS[1])

    def _poll(self, limit: int) -> list[Message]:
        # an idle consumer only reads: the write lock is taken when there is something to reserve
        stream, grp = self.url.topic, self.group
        (work,) = self.db.read(
            "SELECT EXISTS (SELECT 1 FROM messages WHERE stream = ? AND seq > "
            "(SELECT last_seq FROM cursors WHERE stream = ? AND grp = ?)) OR EXISTS (SELECT 1 FROM pending "
            "WHERE stream = ? AND grp = ? AND deadline < ?)",
            stream, stream, grp, stream, grp, time.time(),
        )[0]
        taken: list[Message] = self.db.write(self._take, limit) if work else []
        return taken

    def _take(self, conn: sqlite3.Connection, limit: int) -> list[Message]:
        now = time.time()
        stream, grp = self.url.topic, self.group
        # first what a dead (or slow) consumer left reserved past its deadline, then new messages
        expired = [
            r[0]
            for r in conn.execute(
                "SELECT seq FROM pending WHERE stream = ? AND grp = ? AND deadline < ? ORDER BY seq LIMIT ?",
                (stream, grp, now, limit),
            )
        ]
        if expired:
            conn.executemany(
                "UPDATE pending SET consumer = ?, deadline = ?, deliveries = deliveries + 1 "
                "WHERE stream = ? AND grp = ? AND seq = ?",
                [(self.consumer, now + self.ack_wait, stream, grp, s) for s in expired],
            )
        rows = _messages(conn, stream, expired)
        room = limit - len(rows)
        if room > 0:
            (last,) = conn.execute(
                "SELECT last_seq FROM cursors WHERE stream = ? AND grp = ?", (stream, grp)
            ).fetchone()
            fresh = conn.execute(
                "SELECT seq, key, value, headers, created FROM messages WHERE stream = ? AND seq > ? "
                "ORDER BY seq LIMIT ?",
                (stream, last, room),
            ).fetchall()
            if fresh:
                conn.execute(
                    "UPDATE cursors SET last_seq = ? WHERE stream = ? AND grp = ?", (fresh[-1][0], stream, grp)
                )
                conn.executemany(
                    "INSERT INTO pending (stream, grp, seq, consumer, deadline, deliveries) VALUES (?, ?, ?, ?, ?, 1)",
                    [(stream, grp, r[0], self.consumer, now + self.ack_wait) for r in fresh],
                )
                rows.extend(fresh)
        return [
            Message(str(seq), value, key, orjson.loads(headers) if headers else {}, created, token=seq)
            for seq, key, value, headers, created in rows
        ]

    async def ack(self, messages: Sequence[Message]) -> None:
        if messages:
            seqs = [m.token for m in messages]
            await anyio.to_thread.run_sync(self.db.write, self._ack, seqs)

    def _ack(self, conn: sqlite3.Connection, seqs: list[int]) -> None:
        conn.executemany(
            "DELETE FROM pending WHERE stream = ? AND grp = ? AND seq = ?",
            [(self.url.topic, self.group, s) for s in seqs],
        )

    async def lag(self) -> int | None:
        stream, grp = self.url.topic, self.group
        rows = await anyio.to_thread.run_sync(
            lambda: self.db.read(
                "SELECT (SELECT COUNT(*) FROM messages WHERE stream = ? AND seq > "
                "(SELECT last_seq FROM cursors WHERE stream = ? AND grp = ?)) + "
                "(SELECT COUNT(*) FROM pending WHERE stream = ? AND grp = ?)",
                stream, stream, grp, stream, grp,
            )
        )
        return int(rows[0][0])

    async def close(self) -> None:
        if self._db is not None:
            db, self._db = self._db, None
            db.release()


def _messages(conn: sqlite3.Connection, stream: str, seqs: list[int]) -> list[Any]:
    if not seqs:
        return []
    marks = ",".join("?" * len(seqs))
    return conn.execute(
        f"SELECT seq, key, value, headers, created FROM messages WHERE stream = ? AND seq IN ({marks}) ORDER BY seq",
        (stream, *seqs),
    ).fetchall()


class LocalSink(Sink):
    def __init__(self, url: StreamUrl) -> None:
        url.refuse_unknown(_OPTIONS)
        self.url = url
        self.retention = url.float_option("retention_hours", 168.0) * 3600
        self._db: _Database | None = None

    async def start(self) -> None:
        self._db = await anyio.to_thread.run_sync(_Database.acquire, _path(self.url))

    async def send(self, records: Sequence[Record]) -> None:
        if self._db is None:
            raise BrokerError(f"{self.url} is not started")
        if records:
            await anyio.to_thread.run_sync(self._db.write, self._insert, list(records))

    def _insert(self, conn: sqlite3.Connection, records: list[Record]) -> None:
        now = time.time()
        conn.executemany(
            "INSERT INTO messages (stream, key, value, headers, created) VALUES (?, ?, ?, ?, ?)",
            [(self.url.topic, r.key, r.value, orjson.dumps(r.headers) if r.headers else None, now) for r in records],
        )
        db = self._db
        if db is not None:
            db.sends += 1
            if db.sends % _TRIM_EVERY == 1:
                topic = self.url.topic
                conn.execute("DELETE FROM messages WHERE stream = ? AND created < ?", (topic, now - self.retention))
                conn.execute(  # reservations of messages that aged out would count as lag forever
                    "DELETE FROM pending WHERE stream = ? AND seq < (SELECT COALESCE(MIN(seq), 0) FROM messages "
                    "WHERE stream = ?)",
                    (topic, topic),
                )

    async def close(self) -> None:
        if self._db is not None:
            db, self._db = self._db, None
            db.release()


def source(url: StreamUrl, *, group: str, consumer: str) -> Source:
    return LocalSource(url, group, consumer)


def sink(url: StreamUrl) -> Sink:
    return LocalSink(url)
