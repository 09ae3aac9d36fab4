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
    SUMMARY_INDEX,
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
    "SELECT ts, version, outcome, latency_ms FROM predictions "
    "WHERE model = ? AND ts >= ? AND ts < ? AND coalesce(shadow, 0) = 0"
)
_RECORD = "json_extract(CAST(record AS TEXT), '$.{}')"
# a file written before the summary columns existed: read them from each record (slower)
_OLD_FILE_QUERY = (
    f"SELECT ts, version, {_RECORD.format('outcome')}, {_RECORD.format('latency_ms')} FROM predictions "
    f"WHERE model = ? AND ts >= ? AND ts < ? AND coalesce({_RECORD.format('shadow')}, 0) = 0"
)
_MIXED_FILE_QUERY = (
    f"SELECT ts, version, coalesce(outcome, {_RECORD.format('outcome')}), "
    f"coalesce(latency_ms, {_RECORD.format('latency_ms')}) FROM predictions "
    f"WHERE model = ? AND ts >= ? AND ts < ? AND coalesce(shadow, {_RECORD.format('shadow')}, 0) = 0"
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
            columns = {row[1] for row in conn.execute("PRAGMA table_info(predictions)")}
            indexes = {row[1] for row in conn.execute("PRAGMA index_list(predictions)")}
            if SUMMARY_INDEX in indexes:  # made with the summary columns: every row has them
                query = _FILE_QUERY
            elif "outcome" in columns:  # columns added later: older rows have them in the record only
                query = _MIXED_FILE_QUERY
            else:
                query = _OLD_FILE_QUERY
            rows.extend(conn.execute(query, (model, start, end)).fetchall())
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


def _totals(errors: np.ndarray[Any, Any], refused: np.ndarray[Any, Any], latencies: np.ndarray[Any, Any],
            seconds: float) -> dict[str, Any]:
    n = int(errors.size)
    failed = int(errors.sum())
    known = latencies[~np.isnan(latencies)]
    p50 = p99 = None
    if known.size:
        q50, q99 = np.percentile(known, [50, 99])
        p50, p99 = round(float(q50), 2), round(float(q99), 2)
    return {
        "requests": n,
        "requests_per_second": round(n / seconds, 2) if seconds > 0 else None,
        "errors": failed,
        "refused": int(refused.sum()),
        "error_percent": round(100.0 * failed / n, 2) if n else None,
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
    n = len(rows)
    times = np.fromiter((r[0] for r in rows), dtype=float, count=n)
    versions = np.fromiter((r[1] for r in rows), dtype=np.int64, count=n)
    latencies = np.fromiter((math.nan if r[3] is None else r[3] for r in rows), dtype=float, count=n)
    kinds = {o: is_server_error(o) for o in {r[2] for r in rows}}
    errors = np.fromiter((kinds[r[2]] for r in rows), dtype=bool, count=n)
    refused = np.fromiter((r[2] != "ok" and not kinds[r[2]] for r in rows), dtype=bool, count=n)

    def totals(mask: np.ndarray[Any, Any] | None, span: float) -> dict[str, Any]:
        if mask is None:
            return _totals(errors, refused, latencies, span)
        return _totals(errors[mask], refused[mask], latencies[mask], span)

    out: dict[str, Any] = {"start": start, "end": end, "window_seconds": seconds, **totals(None, seconds),
                           "versions": {str(v): totals(versions == v, seconds) for v in np.unique(versions).tolist()}}
    if buckets > 0:
        width = seconds / buckets
        slot = (np.floor((times - start) / width).astype(np.int64) if width > 0
                else np.zeros(n, dtype=np.int64))
        slot = np.minimum(slot, buckets - 1)
        out["series"] = [{"t": round(start + i * width, 3), **totals(slot == i, width)} for i in range(buckets)]
    return out


def window(end: float | None, seconds: float, now: float) -> tuple[float, float]:
    """``(start, end)`` of a window of ``seconds`` ending at ``end`` (default ``now``)."""
    stop = now if end is None or not math.isfinite(end) else end
    return stop - seconds, stop
