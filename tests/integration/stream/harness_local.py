"""Harness for the embedded broker: the SQLite file read and written with sqlite3 directly."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager
from pathlib import Path

from tests.integration.stream.harness import KeyValue

from shipyard.streams.local import _SCHEMA


class LocalHarness:
    scheme = "local"

    def __init__(self, path: Path) -> None:
        self.path = path
        with closing(self._connect()) as conn:
            conn.executescript(_SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        return conn

    def url(self, topic: str, **options: str) -> str:
        opts = {"path": str(self.path), "ack_wait": "2", **options}
        return f"local://{topic}?" + "&".join(f"{k}={v}" for k, v in opts.items())

    def create_topic(self, topic: str, partitions: int = 1) -> None:
        pass  # streams exist once written to

    def produce(self, topic: str, messages: Sequence[KeyValue]) -> None:
        with closing(self._connect()) as conn:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(
                "INSERT INTO messages (stream, key, value, headers, created) VALUES (?, ?, ?, NULL, ?)",
                [(topic, k, v, time.time()) for k, v in messages],
            )
            conn.execute("COMMIT")

    def read_all(self, topic: str) -> list[KeyValue]:
        with closing(self._connect()) as conn:
            return [(k, bytes(v)) for k, v in conn.execute(
                "SELECT key, value FROM messages WHERE stream = ? ORDER BY seq", (topic,)
            )]

    def unfinished(self, topic: str, group: str) -> int:
        with closing(self._connect()) as conn:
            row = conn.execute("SELECT last_seq FROM cursors WHERE stream = ? AND grp = ?", (topic, group)).fetchone()
            last = row[0] if row else 0
            (fresh,) = conn.execute(
                "SELECT COUNT(*) FROM messages WHERE stream = ? AND seq > ?", (topic, last)
            ).fetchone()
            (pending,) = conn.execute(
                "SELECT COUNT(*) FROM pending WHERE stream = ? AND grp = ?", (topic, group)
            ).fetchone()
            return int(fresh + pending)


@contextmanager
def start(folder: Path) -> Iterator[LocalHarness]:
    yield LocalHarness(folder / "streams.db")
