"""The prediction log: records, redaction, sampling, the buffer, flushing, the files, `shipyard logs`."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from click.testing import CliRunner

from shipyard.cli.main import cli
from shipyard.config import MonitoringConfig, PredictionLogConfig, Settings
from shipyard.context import RequestContext
from shipyard.errors import ConfigError, InvalidOption
from shipyard.monitoring.events import Observers, PredictionEvent
from shipyard.monitoring.predlog import (
    REDACTED,
    PredictionLog,
    parse_since,
    prediction_log,
    read_predictions,
    sampled,
    to_record,
)
from shipyard.monitoring.predlog_sinks import FileSink, PredictionRecord, SqlSink, StreamSink, read_files, record_json

FAST = (0.001, 0.01)  # retry pauses of the tests' logs


def event(model: str = "fraud", version: int = 1, *, route: str = "champion", at: float | None = None,
          outcome: str = "ok", rows: int = 2, prediction_id: str | None = None) -> PredictionEvent:
    ctx = RequestContext(request_id=f"req-{uuid.uuid4().hex[:8]}", transport="rest",
                         prediction_id=prediction_id or uuid.uuid4().hex)
    inputs = {"amount": np.arange(rows, dtype=np.float64) * 10.5, "card": np.array([b"4111"] * rows)}
    outputs = {"score": np.linspace(0, 1, rows).astype(np.float32)} if outcome == "ok" else None
    return PredictionEvent(context=ctx, model=model, version=version, route=route, inputs=inputs, outputs=outputs,
                           started_at=time.time() if at is None else at, latency_s=0.0042, outcome=outcome,
                           rows=rows, error=None if outcome == "ok" else "boom", trace_id="ab" * 16)


class MemorySink:
    """Keeps what it is given; fails while ``down`` is set, waits while ``gate`` is clear."""

    def __init__(self) -> None:
        self.records: list[PredictionRecord] = []
        self.down = False
        self.gate = threading.Event()
        self.gate.set()
        self.attempts = 0
        self.closed = False

    def write(self, records: Sequence[PredictionRecord]) -> None:
        self.attempts += 1
        self.gate.wait(10)
        if self.down:
            raise ConnectionError("sink is down")
        self.records.extend(plain(r) for r in records)  # as a real sink writes them: JSON

    def close(self) -> None:
        self.closed = True


def plain(record: Any) -> Any:
    """A record as every sink writes it (JSON), read back."""
    return orjson.loads(record_json(record))


@pytest.fixture
def sink() -> MemorySink:
    return MemorySink()


@pytest.fixture
def log(sink: MemorySink) -> Iterator[PredictionLog]:
    plog = PredictionLog(sink, max_buffer=100, backoff=FAST)
    try:
        yield plog
    finally:
        sink.gate.set()
        plog.close(timeout=5)


# -- records ---------------------------------------------------------------------------------------------


def test_record_holds_ids_time_route_rows_and_latency() -> None:
    e = event(version=3, route="canary", at=1714564800.123)
    record = plain(to_record(e))
    assert record["prediction_id"] == e.context.prediction_id
    assert record["request_id"] == e.context.request_id
    assert record["time"] == "2024-05-01T12:00:00.123000Z"
    assert (record["model"], record["version"], record["route"]) == ("fraud", 3, "canary")
    assert record["inputs"] == {"amount": [0.0, 10.5], "card": ["4111", "4111"]}
    assert record["outputs"] == {"score": [0.0, 1.0]}
    assert record["latency_ms"] == 4.2
    assert (record["outcome"], record["trace_id"], record["rows"]) == ("ok", "ab" * 16, 2)
    orjson.dumps(record)  # JSON-able as it is


def test_record_of_a_failure_has_no_outputs_and_names_the_error() -> None:
    record = to_record(event(outcome="unavailable"))
    assert record["outputs"] is None
    assert (record["outcome"], record["error"]) == ("unavailable", "boom")


def test_record_turns_nan_and_infinity_into_null() -> None:
    e = event()
    e.inputs["amount"] = np.array([[1.0, np.nan], [np.inf, 2.0]])  # type: ignore[index]
    assert plain(to_record(e))["inputs"]["amount"] == [[1.0, None], [None, 2.0]]


def test_redacted_fields_are_replaced_in_inputs_and_outputs() -> None:
    record = plain(to_record(event(), frozenset({"card", "score"})))
    assert record["inputs"] == {"amount": [0.0, 10.5], "card": REDACTED}
    assert record["outputs"] == {"score": REDACTED}


def test_log_redacts_what_its_config_names(sink: MemorySink) -> None:
    plog = PredictionLog(sink, redact=("card",), backoff=FAST)
    plog.observe([event()])
    plog.close()
    assert sink.records[0]["inputs"]["card"] == REDACTED
    assert sink.records[0]["inputs"]["amount"] == [0.0, 10.5]


# -- sampling --------------------------------------------------------------------------------------------


def test_sampling_decides_the_same_way_for_the_same_prediction_id() -> None:
    ids = [f"prediction-{i}" for i in range(2000)]
    first = [sampled(i, 0.3) for i in ids]
    assert first == [sampled(i, 0.3) for i in ids]
    assert any(first) and not all(first)


def test_sampling_keeps_about_the_configured_share() -> None:
    kept = sum(sampled(uuid.UUID(int=i * 7919 + 1).hex, 0.25) for i in range(20_000))
    assert 4500 < kept < 5500  # 25% of 20 000 is 5000; the binomial sd is about 61


def test_sampling_at_zero_keeps_nothing_and_at_one_keeps_everything() -> None:
    ids = [uuid.uuid4().hex for _ in range(500)]
    assert not any(sampled(i, 0.0) for i in ids)
    assert all(sampled(i, 1.0) for i in ids)


def test_log_records_only_sampled_predictions(sink: MemorySink) -> None:
    plog = PredictionLog(sink, sample=0.5, backoff=FAST)
    events = [event() for _ in range(400)]
    plog.observe(events)
    plog.close()
    expected = [e.context.prediction_id for e in events if sampled(e.context.prediction_id, 0.5)]
    assert [r["prediction_id"] for r in sink.records] == expected
    assert plog.skipped == 400 - len(expected)


# -- buffer, retries, flush ------------------------------------------------------------------------------


def test_full_buffer_drops_and_counts_while_the_sink_is_slow(log: PredictionLog, sink: MemorySink) -> None:
    sink.gate.clear()  # the first write waits: nothing leaves the buffer
    events = [event() for _ in range(130)]
    for e in events:
        log.observe([e])
    assert log.pending == 100
    assert log.dropped == 30
    sink.gate.set()
    log.flush()
    assert log.written == 100
    assert [r["prediction_id"] for r in sink.records] == [e.context.prediction_id for e in events[:100]]


def test_records_wait_while_the_sink_is_down_and_arrive_when_it_is_back(log: PredictionLog,
                                                                         sink: MemorySink) -> None:
    sink.down = True
    events = [event() for _ in range(120)]
    log.observe(events[:60])
    log.observe(events[60:])
    assert log.pending == 100 and log.dropped == 20  # observe returned with the sink refusing every write
    while sink.attempts < 3:  # the writer keeps retrying
        log.flush(timeout=0.05)
    assert log.failures >= 2 and log.written == 0
    sink.down = False
    log.flush()
    assert log.pending == 0 and log.written == 100
    assert [r["prediction_id"] for r in sink.records] == [e.context.prediction_id for e in events[:100]]


def test_flush_writes_everything_buffered(sink: MemorySink) -> None:
    plog = PredictionLog(sink, max_buffer=5000, backoff=FAST)
    for _ in range(30):
        plog.observe([event() for _ in range(100)])
    plog.flush()
    assert len(sink.records) == 3000 and plog.written == 3000 and plog.dropped == 0
    plog.close()
    assert sink.closed


def test_close_gives_up_on_a_dead_sink_and_counts_what_is_lost(sink: MemorySink) -> None:
    sink.down = True
    plog = PredictionLog(sink, max_buffer=50, backoff=FAST)
    plog.observe([event() for _ in range(10)])
    plog.close(timeout=0.2)
    assert plog.written == 0 and plog.dropped == 10 and sink.closed
    plog.observe([event()])  # after close: counted, not kept
    assert plog.dropped == 11


def test_observers_stop_flushes_the_log_to_the_files(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, monitoring=MonitoringConfig(
        prediction_log=PredictionLogConfig(enabled=True)))
    plog = prediction_log(settings)
    assert plog is not None
    observers = Observers([plog])

    async def run() -> None:
        await observers.start()
        for _ in range(250):
            observers.emit(event())
        await observers.stop()

    asyncio.run(run())
    try:
        assert len(read_predictions(settings, "fraud", limit=1000)) == 250
    finally:
        plog.close()


# -- factory ---------------------------------------------------------------------------------------------


def _settings(home: Path, **config: Any) -> Settings:
    return Settings(home=home, monitoring=MonitoringConfig(prediction_log=PredictionLogConfig(**config)))


def test_factory_returns_none_when_the_log_is_off(tmp_path: Path) -> None:
    assert prediction_log(_settings(tmp_path)) is None


def test_factory_picks_the_sink_from_the_url(tmp_path: Path) -> None:
    for sink_url, kind in [("", FileSink), (f"sqlite:///{tmp_path}/p.db", SqlSink), ("local://preds", StreamSink)]:
        plog = prediction_log(_settings(tmp_path, enabled=True, sink=sink_url, sample=0.5, redact=("card",)))
        assert plog is not None and isinstance(plog.sink, kind)
        assert plog.sample == 0.5 and plog.redact == {"card"}
        plog.close()


def test_factory_refuses_an_unknown_sink_scheme(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="stream URL"):
        prediction_log(_settings(tmp_path, enabled=True, sink="ftp://host/predictions"))


def test_config_takes_a_comma_separated_redact_list() -> None:
    assert PredictionLogConfig(redact="card, ssn").redact == ("card", "ssn")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        PredictionLogConfig(max_file_bytes=10, max_total_bytes=5)


# -- the embedded files ----------------------------------------------------------------------------------


def _records(n: int, **kw: Any) -> list[PredictionRecord]:
    return [to_record(event(**kw)) for _ in range(n)]


def test_file_sink_ignores_a_record_written_twice(tmp_path: Path) -> None:
    files = FileSink(tmp_path, max_file_bytes=1 << 20, max_total_bytes=1 << 24)
    batch = _records(5)
    files.write(batch)
    files.write(batch)  # a retry after a write whose success was not seen
    files.close()
    assert len(read_files(tmp_path, "fraud")) == 5


def test_file_sink_rotates_at_the_size_and_deletes_the_oldest_beyond_the_total(tmp_path: Path) -> None:
    files = FileSink(tmp_path, max_file_bytes=48 * 1024, max_total_bytes=160 * 1024)
    written: list[PredictionRecord] = []
    for _ in range(60):
        batch = _records(20, rows=8)
        files.write(batch)
        written.extend(batch)
    current = files.path
    files.close()
    paths = files.files()
    assert len(paths) >= 3
    assert paths[-1] == current
    closed = paths[:-1]
    assert all(p.stat().st_size >= 48 * 1024 for p in closed)
    assert sum(p.stat().st_size for p in closed) <= 160 * 1024
    kept = read_files(tmp_path, "fraud", limit=len(written))
    kept_ids = [r["prediction_id"] for r in kept]
    assert written[0]["prediction_id"] not in kept_ids  # the oldest file went
    assert kept_ids == [r["prediction_id"] for r in written[-len(kept):]]  # what is left is the newest, in order


def test_file_sink_appends_to_the_newest_file_after_a_restart(tmp_path: Path) -> None:
    first = FileSink(tmp_path, max_file_bytes=1 << 20, max_total_bytes=1 << 24)
    first.write(_records(3))
    first.close()
    second = FileSink(tmp_path, max_file_bytes=1 << 20, max_total_bytes=1 << 24)
    second.write(_records(4))
    second.close()
    assert len(second.files()) == 1
    assert len(read_files(tmp_path, "fraud")) == 7


def test_file_sinks_of_two_workers_write_their_own_files_and_read_back_together(tmp_path: Path) -> None:
    sinks = [FileSink(tmp_path, max_file_bytes=48 * 1024, max_total_bytes=1 << 24, writer=f"w{i}") for i in (0, 1)]
    for _ in range(3):  # interleaved, as the workers of one server write
        for sink in sinks:
            sink.write(_records(2))
    for sink in sinks:
        sink.close()
    assert sinks[0].path != sinks[1].path
    assert sorted(p.name.rsplit("-", 1)[-1] for p in sinks[0].files()) == ["w0.db", "w1.db"]
    again = FileSink(tmp_path, max_file_bytes=48 * 1024, max_total_bytes=1 << 24, writer="w1")
    again.write(_records(1))  # a replaced worker appends to its own newest file
    again.close()
    assert again.path == sinks[1].path
    assert len(read_files(tmp_path, "fraud")) == 13


def test_retention_spares_the_file_another_worker_is_writing(tmp_path: Path) -> None:
    other = FileSink(tmp_path, max_file_bytes=1 << 20, max_total_bytes=1 << 24, writer="w0")
    other.write(_records(20, rows=8))  # the oldest file, still being written
    busy = FileSink(tmp_path, max_file_bytes=16 * 1024, max_total_bytes=40 * 1024, writer="w1")
    for _ in range(30):
        busy.write(_records(20, rows=8))
    assert other.path is not None and other.path.exists()
    other.close()
    busy.close()


def test_sql_sink_writes_and_reads_back_a_sqlite_table(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/predictions.db"
    table = SqlSink(url)
    batch = _records(3, version=2) + _records(2, model="other")
    table.write(batch)
    table.write(batch[:2])  # retried: skipped
    table.close()
    got = read_predictions(Settings(home=tmp_path), "fraud", sink=url)
    assert [r["prediction_id"] for r in got] == [r["prediction_id"] for r in batch[:3]]
    assert got[0]["inputs"] == plain(batch[0])["inputs"] and got[0]["time"] == batch[0]["time"]


# -- shipyard logs ---------------------------------------------------------------------------------------


def test_parse_since_takes_durations_and_iso_times() -> None:
    assert parse_since("90m", now=lambda: 10_000.0) == 10_000.0 - 5400
    assert parse_since("2d", now=lambda: 1e6) == 1e6 - 2 * 86400
    assert parse_since("2024-05-01T12:00:00Z") == 1714564800.0
    assert parse_since("2024-05-01T12:00:00") == 1714564800.0  # no zone: UTC
    with pytest.raises(InvalidOption):
        parse_since("yesterday")


@pytest.fixture
def logged_home(tmp_path: Path) -> Path:
    """A home whose embedded log holds fraud v1 from two days ago, fraud v2 now, and another model."""
    plog = prediction_log(_settings(tmp_path, enabled=True))
    assert plog is not None
    old = time.time() - 2 * 86400
    plog.observe([event(version=1, at=old + i, prediction_id=f"old-{i}") for i in range(3)])
    plog.observe([event(version=2, route="canary", prediction_id=f"new-{i}") for i in range(4)])
    plog.observe([event(model="churn", prediction_id="churn-0")])
    plog.close()
    return tmp_path


def logs(home: Path, *args: str) -> list[dict[str, Any]]:
    result = CliRunner().invoke(cli, ["--home", str(home), "logs", *args, "--format", "jsonl"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return [orjson.loads(line) for line in result.output.splitlines()]


def test_logs_prints_a_models_records_oldest_first_as_json_lines(logged_home: Path) -> None:
    ids = [r["prediction_id"] for r in logs(logged_home, "fraud")]
    assert ids == [f"old-{i}" for i in range(3)] + [f"new-{i}" for i in range(4)]


def test_logs_filters_by_since_version_and_limit(logged_home: Path) -> None:
    assert [r["prediction_id"] for r in logs(logged_home, "fraud", "--since", "1d")] == [f"new-{i}" for i in
                                                                                       range(4)]
    assert {r["version"] for r in logs(logged_home, "fraud", "--version", "1")} == {1}
    assert [r["prediction_id"] for r in logs(logged_home, "fraud", "--limit", "2")] == ["new-2", "new-3"]
    assert logs(logged_home, "nobody") == []


def test_logs_shows_a_table_by_default(logged_home: Path) -> None:
    result = CliRunner().invoke(cli, ["--home", str(logged_home), "logs", "churn"], catch_exceptions=False,
                                terminal_width=200)
    assert result.exit_code == 0
    assert "churn-0" in result.output and "champion" in result.output and "ok" in result.output


def test_logs_reads_a_sql_sink_given_with_sink(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/table.db"
    plog = prediction_log(_settings(tmp_path, enabled=True, sink=url))
    assert plog is not None
    plog.observe([event(prediction_id="in-sql")])
    plog.close()
    assert [r["prediction_id"] for r in logs(tmp_path, "fraud", "--sink", url)] == ["in-sql"]


def test_logs_refuses_a_stream_sink_and_a_bad_since(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(cli, ["--home", str(tmp_path), "logs", "fraud", "--sink", "redis://127.0.0.1/p"])
    assert result.exit_code == 1 and "broker" in result.output
    result = runner.invoke(cli, ["--home", str(tmp_path), "logs", "fraud", "--since", "soon"])
    assert result.exit_code == 1 and "--since" in result.output
