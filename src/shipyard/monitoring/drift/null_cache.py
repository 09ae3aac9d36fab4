"""Null thresholds kept on disk, so a restarted server (or another worker of the same home) reuses them.

A distance test's threshold is the upper quantile of the distance between the reference and
an undrifted window of the same size, found by drawing a few thousand such windows: about
75 ms per feature and window size on a 2-core machine, so 1.5 s of CPU for a 20-feature
model the first time each window size is seen. The draws are seeded, so a threshold depends
only on its inputs; the server process keeps them in memory (``detector``) and here, in a
small SQLite file under the home's cache folder, keyed by a digest of those inputs.

The cache is an optimisation only: a file that cannot be opened, read or written is logged
once and the threshold is computed as if it were absent.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
import threading
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


class NullThresholdCache:
    """Thresholds by digest of (test, reference counts, bins, window size, tail probability, draws, seed)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._broken = False

    @staticmethod
    def key(*inputs: Any) -> str:
        # floats go through repr in JSON, so equal inputs give equal text and a changed bit a new key
        return hashlib.sha256(json.dumps(inputs, separators=(",", ":")).encode()).hexdigest()

    def get(self, key: str) -> float | None:
        row = self._run("SELECT value FROM null_thresholds WHERE key = ?", (key,))
        return None if row is None else float(row[0])

    def put(self, key: str, value: float) -> None:
        self._run("INSERT OR IGNORE INTO null_thresholds (key, value) VALUES (?, ?)", (key, value))

    def _run(self, sql: str, args: tuple[Any, ...]) -> Any:
        if self._broken:
            return None
        try:
            with self._lock:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                conn = sqlite3.connect(self.path, timeout=5.0)
                try:
                    with conn:
                        conn.execute("CREATE TABLE IF NOT EXISTS null_thresholds (key TEXT PRIMARY KEY, value REAL)")
                        return conn.execute(sql, args).fetchone()
                finally:
                    conn.close()
        except (OSError, sqlite3.Error) as exc:
            self._broken = True
            logger.warning("drift thresholds are not kept in %s (%s): each restart computes them again",
                           self.path, exc)
            return None
