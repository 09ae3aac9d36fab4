"""Requests a second, error rate and latency quantiles of a model over a window, from the prediction log.

The prediction log is the fleet's record of every request (each replica writes its own
files, or all write one table), so a summary read from it covers every replica, which
one process's Prometheus counters do not. ``read_rows`` takes the four columns a summary
needs (time, version, outcome, latency) of a model's non-shadow records in ``[start, end)``
from the embedded files or a SQL sink, without decoding the records' inputs and outputs;
``summarize`` is the pure arithmetic over them. ``GET /v1/models/{name}/summary`` and
``GET /v1/overview`` answer with it, and the dashboard draws what they answer.

Errors are server-side failures (``rollout.arm_stats.is_server_error``: what a rollout's
error rate counts); input the server refused (400s) is counted apart, as ``refused``.
Quantiles are NumPy's linear interpolation over the window's latencies, in milliseconds.
"""

from __future__ import annotations

import contextlib
import logging
import math
import sqlite3
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np
import sqlalchemy as sa

from shipyard.config import Settings
from shipyard.errors import ConfigError
from shipyard.monitoring.predlog_sinks import (
    TABLE,
    default_folder,
    log_files,
    predictions_table,
    sink_kind,
)
from shipyard.rollout.arm_stats import is_server_error

__all__ = ["Row", "log_source", "read_rows", "summarize"]

logger = logging.getLogger(__name__)

Row = tuple[float, int, str, float]
"""(epoch seconds, version, outcome, latency in ms) of one logged request."""

_FILE_QUERY = (
    "SELECT ts, version, json_extract(CAST(record AS TEXT), '$.outcome'), "
    "json_extract(CAST(record AS TEXT), '$.latency_ms') FROM predictions "
    "WHERE model = ? AND ts >= ? AND ts < ? AND coalesce(json_extract(CAST(record AS TEXT), '$.shadow'), 0) = 0"
)


def log_source(settings: Settings) -> str | None:
    """Where summaries are read from: ``file`` or ``sql``; None when the log is off or goes to a broker."""
    config = settings.monitoring.prediction_log
    if not config.enabled:
        return None
    try:
        kind = sink_kind(config.sink)
    except ConfigError:
        return None
    return kind if kind in ("file", "sql") else None


def read_rows(settings: Settings, model: str, *, start: float, end: float) -> list[Row]:
    """The (time, version, outcome, latency ms) of ``model``'s non-shadow logged requests in ``[start, end)``."""
    kind = log_source(settings)
    if kind == "file":
        return _file_rows(settings, model, start, end)
    if kind == "sql":
        return _sql_rows(settings.monitoring.prediction_log.sink, model, start, end)
    return []


def _file_rows(settings: Settings, model: str, start: float, end: float) -> list[Row]:
    rows: list[Row] = []
    for path in log_files(default_folder(settings)):
        try:
            conn = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=30)
        except sqlite3.Error:
            continue  # deleted by retention meanwhile
        try:
            rows.extend(conn.execute(_FILE_QUERY, (model, start, end)).fetchall())
        except sqlite3.Error as exc:
            logger.warning("prediction log: cannot read %s: %s", path, exc)
        finally:
            with contextlib.suppress(sqlite3.Error):
                conn.close()
    return rows


def _sql_rows(url: str, model: str, start: float, end: float) -> list[Row]:
    from shipyard.monitoring.predlog_sinks import _engine

    t = predictions_table
    engine = _engine(url)
    try:
        with engine.connect() as conn:
            if not sa.inspect(conn).has_table(TABLE):
                return []
            found = conn.execute(
                sa.select(t.c.time, t.c.version, t.c.outcome, t.c.latency_ms).where(
                    t.c.model == model, t.c.shadow.is_(False),
                    t.c.time >= datetime.fromtimestamp(start, UTC), t.c.time < datetime.fromtimestamp(end, UTC))
            ).all()
    finally:
        engine.dispose()
    out: list[Row] = []
    for at, version, outcome, latency in found:
        if at.tzinfo is None:  # SQLite keeps no zone; every stored time is UTC
            at = at.replace(tzinfo=UTC)
        out.append((at.timestamp(), int(version), str(outcome), float(latency)))
    return out


def _totals(rows: Sequence[Row], seconds: float) -> dict[str, Any]:
    n = len(rows)
    errors = sum(1 for r in rows if is_server_error(r[2]))
    refused = sum(1 for r in rows if r[2] != "ok" and not is_server_error(r[2]))
    latencies = np.fromiter((r[3] for r in rows if r[3] is not None), dtype=float, count=-1)
    p50 = p99 = None
    if latencies.size:
        q50, q99 = np.percentile(latencies, [50, 99])
        p50, p99 = round(float(q50), 2), round(float(q99), 2)
    return {
        "requests": n,
        "requests_per_second": round(n / seconds, 2) if seconds > 0 else None,
        "errors": errors,
        "refused": refused,
        "error_percent": round(100.0 * errors / n, 2) if n else None,
        "p50_ms": p50,
        "p99_ms": p99,
    }


def summarize(rows: Sequence[Row], *, start: float, end: float, buckets: int = 0) -> dict[str, Any]:
    """Totals over ``[start, end)``, per version, and (``buckets`` > 0) a time series of equal slices.

    Returns:
        ``{"start", "end", "window_seconds", <totals>, "versions": {"3": <totals>}, "series": [...]}``
        where totals are requests, requests_per_second, errors, refused, error_percent, p50_ms and
        p99_ms (None where there is nothing to say), rounded as the dashboard shows them.
    """
    seconds = end - start
    by_version: dict[int, list[Row]] = {}
    for r in rows:
        by_version.setdefault(int(r[1]), []).append(r)
    out: dict[str, Any] = {"start": start, "end": end, "window_seconds": seconds, **_totals(rows, seconds),
                           "versions": {str(v): _totals(rs, seconds) for v, rs in sorted(by_version.items())}}
    if buckets > 0:
        width = seconds / buckets
        slices: list[list[Row]] = [[] for _ in range(buckets)]
        for r in rows:
            i = min(int((r[0] - start) // width), buckets - 1) if width > 0 else 0
            if 0 <= i < buckets:
                slices[i].append(r)
        out["series"] = [{"t": round(start + i * width, 3), **_totals(s, width)} for i, s in enumerate(slices)]
    return out


def window(end: float | None, seconds: float, now: float) -> tuple[float, float]:
    """``(start, end)`` of a window of ``seconds`` ending at ``end`` (default ``now``)."""
    stop = now if end is None or not math.isfinite(end) else end
    return stop - seconds, stop
