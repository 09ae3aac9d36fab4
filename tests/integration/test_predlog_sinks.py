"""The prediction log against real sinks: every broker and PostgreSQL get every record; a Redis that goes down.

Brokers are read back with their own client libraries (the stream tests' harnesses), PostgreSQL with plain
SQLAlchemy, so what is checked is what landed in the sink, not what shipyard believes it wrote.
"""

from __future__ import annotations

import importlib
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import numpy as np
import orjson
import pytest
import redis
import sqlalchemy as sa
from click.testing import CliRunner
from tests.integration.stream.harness import Harness

from shipyard.cli.main import cli
from shipyard.config import Settings
from shipyard.context import RequestContext
from shipyard.monitoring.events import PredictionEvent
from shipyard.monitoring.predlog import PredictionLog
from shipyard.monitoring.predlog_sinks import TABLE, StreamSink, open_prediction_sink
from shipyard.streams.broker import StreamUrl
from shipyard.testing import RedisUnavailable, free_port
from shipyard.testing._process import ServiceUnavailable, stop_process
from shipyard.testing.redis import find_redis_server

pytestmark = pytest.mark.integration

FAST = (0.02, 0.5)  # retry pauses: a sink that comes back is written to within half a second


def event(i: int, model: str = "fraud") -> PredictionEvent:
    ctx = RequestContext(request_id=f"req-{i}", transport="rest", prediction_id=uuid.uuid4().hex)
    return PredictionEvent(context=ctx, model=model, version=2, route="champion",
                           inputs={"amount": np.array([float(i), 1.5]), "card": np.array([b"4111", b"4222"])},
                           outputs={"score": np.array([0.25, 0.75], dtype=np.float32)},
                           started_at=time.time(), latency_s=0.003, outcome="ok", rows=2, trace_id=None)


@pytest.fixture(scope="module", params=["local", "redis", "nats", "kafka"])
def broker(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    module = importlib.import_module(f"tests.integration.stream.harness_{request.param}")
    with ExitStack() as stack:
        try:
            harness = stack.enter_context(module.start(tmp_path_factory.mktemp(f"predlog-{request.param}")))
        except ServiceUnavailable as exc:
            pytest.skip(str(exc))
        yield harness


def test_every_record_reaches_the_broker_keyed_by_prediction_id(broker: Harness, tmp_path: Path) -> None:
    topic = f"predictions-{uuid.uuid4().hex[:8]}"
    sink = open_prediction_sink(broker.url(topic), Settings(home=tmp_path), max_file_bytes=1 << 20,
                                max_total_bytes=1 << 30)
    assert isinstance(sink, StreamSink)
    plog = PredictionLog(sink, redact=("card",), backoff=FAST)
    events = [event(i) for i in range(300)]
    for start in range(0, 300, 25):
        plog.observe(events[start:start + 25])
    plog.close()
    assert (plog.written, plog.dropped) == (300, 0)
    got = broker.read_all(topic)
    assert [key for key, _ in got] == [e.context.prediction_id for e in events]
    first = orjson.loads(got[0][1])
    assert first["request_id"] == "req-0" and first["model"] == "fraud" and first["version"] == 2
    assert first["inputs"] == {"amount": [0.0, 1.5], "card": "<redacted>"}
    assert first["outputs"] == {"score": [0.25, 0.75]}


def test_every_record_reaches_the_postgres_table(pg_database_url: str, tmp_path: Path) -> None:
    sink = open_prediction_sink(pg_database_url, Settings(home=tmp_path), max_file_bytes=1 << 20,
                                max_total_bytes=1 << 30)
    plog = PredictionLog(sink, backoff=FAST)
    events = [event(i) for i in range(300)] + [event(0, model="churn")]
    for start in range(0, len(events), 40):
        plog.observe(events[start:start + 40])
    plog.close()
    assert plog.written == 301
    engine = sa.create_engine(pg_database_url)
    try:
        with engine.connect() as conn:
            rows = conn.exec_driver_sql(f"SELECT prediction_id, model, inputs, outputs FROM {TABLE}").all()
    finally:
        engine.dispose()
    assert {r[0] for r in rows} == {e.context.prediction_id for e in events}
    fraud = {r[0]: r for r in rows if r[1] == "fraud"}
    assert fraud[events[7].context.prediction_id][2]["amount"] == [7.0, 1.5]
    assert fraud[events[7].context.prediction_id][3] == {"score": [0.25, 0.75]}

    result = CliRunner().invoke(cli, ["--home", str(tmp_path), "logs", "fraud", "--sink", pg_database_url,
                                      "--limit", "3", "--format", "jsonl"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert [orjson.loads(line)["prediction_id"] for line in result.output.splitlines()] == [
        e.context.prediction_id for e in events[297:300]]


# -- a sink that is down ---------------------------------------------------------------------------------


@contextmanager
def redis_on(port: int, folder: Path) -> Iterator[None]:
    """redis-server on 127.0.0.1:``port`` (a fixed port, so it can come back where the log writes to)."""
    folder.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([str(find_redis_server()), "--bind", "127.0.0.1", "--port", str(port), "--save", "",
                             "--appendonly", "no", "--dir", str(folder), "--logfile", str(folder / "redis.log")],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        client = redis.Redis(port=port, socket_timeout=2)
        deadline = time.monotonic() + 20
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start on port {port}; see {folder}/redis.log") from None
                time.sleep(0.02)
            finally:
                client.close()
        yield
    finally:
        stop_process(proc, "Redis")


def stream_ids(port: int, key: str) -> list[str]:
    client = redis.Redis(port=port, socket_timeout=5)
    try:
        return [fields[b"key"].decode() for _, fields in client.xrange(key, "-", "+")]
    finally:
        client.close()


def test_a_down_sink_buffers_up_to_the_bound_drops_the_rest_and_catches_up(tmp_path: Path) -> None:
    try:
        find_redis_server()
    except RedisUnavailable as exc:
        pytest.skip(str(exc))
    port = free_port()
    plog = PredictionLog(StreamSink(StreamUrl.parse(f"redis://127.0.0.1:{port}/predictions")), max_buffer=200,
                         backoff=FAST)
    try:
        with redis_on(port, tmp_path / "first"):
            before = [event(i) for i in range(50)]
            plog.observe(before)
            plog.flush()
            assert plog.written == 50
            assert stream_ids(port, "predictions") == [e.context.prediction_id for e in before]

        # Redis is gone: observe keeps returning, records wait up to the bound, the rest are dropped and counted
        during = [event(i) for i in range(260)]
        for start in range(0, 260, 20):
            plog.observe(during[start:start + 20])
        assert plog.pending == 200
        assert plog.dropped == 60
        deadline = time.monotonic() + 30
        while plog.failures < 2 and time.monotonic() < deadline:  # the writer retries against the dead port
            plog.flush(timeout=0.1)
        assert plog.failures >= 2 and plog.written == 50 and plog.pending == 200

        with redis_on(port, tmp_path / "second"):  # back on the same port (empty: it kept nothing on disk)
            plog.flush(timeout=30)
            assert plog.pending == 0
            assert plog.written == 250 and plog.dropped == 60
            assert stream_ids(port, "predictions") == [e.context.prediction_id for e in during[:200]]
    finally:
        plog.close(timeout=5)
