"""Traffic summaries from the prediction log: the arithmetic, and reading new, old and migrated log files."""

from __future__ import annotations

import sqlite3
import uuid
from pathlib import Path

import numpy as np
import pytest

from shipyard.config import MonitoringConfig, PredictionLogConfig, Settings
from shipyard.monitoring.predlog_sinks import FileSink, default_folder, iso_time, record_json
from shipyard.monitoring.traffic_summary import log_source, read_rows, summarize

NOW = 1_800_000_000.0


def record(model: str, at: float, *, version: int = 1, outcome: str = "ok", latency: float = 1.0,
           shadow: bool = False) -> dict[str, object]:
    return {"prediction_id": uuid.uuid4().hex, "request_id": "r", "time": iso_time(at), "model": model,
            "version": version, "route": model, "transport": "rest", "principal": None, "inputs": {"x": [1.0]},
            "outputs": {"y": [0]}, "latency_ms": latency, "outcome": outcome, "error": None, "rows": 1,
            "cached": False, "trace_id": None, "shadow": shadow, "policy_revision": None}


def logging_settings(tmp_path: Path, sink: str = "") -> Settings:
    return Settings(home=tmp_path / "home", monitoring=MonitoringConfig(
        prediction_log=PredictionLogConfig(enabled=True, sink=sink)))


def test_summary_counts_server_errors_apart_from_refused_input_and_reads_quantiles() -> None:
    latencies = [float(i) for i in range(1, 101)]
    rows = [(NOW - 50 + i * 0.1, 1 if i < 80 else 2, "internal" if i % 10 == 0 else "invalid_input" if i == 3 else "ok",
             latencies[i]) for i in range(100)]
    out = summarize(rows, start=NOW - 100, end=NOW, buckets=4)
    assert out["requests"] == 100 and out["requests_per_second"] == 1.0
    assert out["errors"] == 10 and out["refused"] == 1 and out["error_percent"] == 10.0
    assert out["p50_ms"] == round(float(np.percentile(latencies, 50)), 2)
    assert out["p99_ms"] == round(float(np.percentile(latencies, 99)), 2)
    assert out["versions"]["1"]["requests"] == 80 and out["versions"]["2"]["requests"] == 20
    assert [s["requests"] for s in out["series"]] == [0, 0, 100, 0]  # every row in the third 25-s slice
    assert out["series"][0]["p50_ms"] is None and out["series"][0]["error_percent"] is None


def test_an_empty_window_says_nothing_rather_than_zero_latency() -> None:
    out = summarize([], start=NOW - 300, end=NOW)
    assert out["requests"] == 0 and out["requests_per_second"] == 0.0
    assert out["p50_ms"] is None and out["error_percent"] is None and out["versions"] == {}


def test_rows_come_from_the_files_the_server_writes_without_shadows_or_other_models(tmp_path: Path) -> None:
    settings = logging_settings(tmp_path)
    sink = FileSink(default_folder(settings), max_file_bytes=1 << 30, max_total_bytes=1 << 31)
    sink.write([record("a", NOW - 10, latency=2.5), record("a", NOW - 5, outcome="internal"),
                record("a", NOW - 4, shadow=True), record("b", NOW - 3), record("a", NOW - 400)])
    sink.close()
    rows = sorted(read_rows(settings, "a", start=NOW - 300, end=NOW))
    assert rows == [(pytest.approx(NOW - 10), 1, "ok", 2.5), (pytest.approx(NOW - 5), 1, "internal", 1.0)]


def test_files_from_before_the_summary_columns_are_read_and_then_migrated(tmp_path: Path) -> None:
    settings = logging_settings(tmp_path)
    folder = default_folder(settings)
    folder.mkdir(parents=True)
    old = folder / "predictions-20240101T000000000000.db"
    conn = sqlite3.connect(old)
    conn.executescript("CREATE TABLE predictions (prediction_id TEXT PRIMARY KEY, ts REAL NOT NULL, model TEXT NOT "
                       "NULL, version INTEGER NOT NULL, record BLOB NOT NULL); CREATE INDEX predictions_by_model ON "
                       "predictions (model, ts);")
    r = record("a", NOW - 20, outcome="timeout", latency=7.0)
    conn.execute("INSERT INTO predictions VALUES (?, ?, ?, ?, ?)",
                 (r["prediction_id"], NOW - 20, "a", 1, record_json(r)))
    conn.commit()
    conn.close()
    assert read_rows(settings, "a", start=NOW - 300, end=NOW) == [(NOW - 20, 1, "timeout", 7.0)]
    sink = FileSink(folder, max_file_bytes=1 << 30, max_total_bytes=1 << 31)  # appends to the newest file: old
    sink.write([record("a", NOW - 10, latency=3.0, shadow=True), record("a", NOW - 9, latency=4.0)])
    sink.close()
    assert sorted(read_rows(settings, "a", start=NOW - 300, end=NOW)) == [
        (NOW - 20, 1, "timeout", 7.0), (pytest.approx(NOW - 9), 1, "ok", 4.0)]


def test_summaries_need_a_log_they_can_read(tmp_path: Path) -> None:
    assert log_source(Settings(home=tmp_path)) is None  # the log is off
    assert log_source(logging_settings(tmp_path)) == "file"
    assert log_source(logging_settings(tmp_path, "sqlite:///x.db")) == "sql"
    assert log_source(logging_settings(tmp_path, "kafka://host:9092/t")) is None
    assert read_rows(Settings(home=tmp_path), "a", start=0, end=NOW) == []


def test_rows_come_from_a_sql_sink_too(tmp_path: Path) -> None:
    from shipyard.monitoring.predlog_sinks import SqlSink

    url = f"sqlite:///{tmp_path / 'log.db'}"
    sink = SqlSink(url)
    sink.write([record("a", NOW - 10, latency=2.0), record("a", NOW - 8, shadow=True)])
    sink.close()
    assert read_rows(logging_settings(tmp_path, url), "a", start=NOW - 300, end=NOW) == [
        (pytest.approx(NOW - 10), 1, "ok", 2.0)]
