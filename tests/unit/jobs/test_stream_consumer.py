"""The stream consumer in-process, on the embedded broker: scoring, dead letters, retries, backpressure, drain.

Brokers over the network are covered in tests/integration/stream; here the
embedded SQLite broker (a real one, in a temp folder) lets faults be injected
around it: a sink that refuses, a model that fails on one row, a slow model.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from sklearn.linear_model import LogisticRegression
from tests.fixtures.batch import FEATURES, iris_rows

from shipyard.errors import BrokerError, ConfigError, InferenceError, ModelNotReady
from shipyard.registry import LoadedModel, Registry
from shipyard.runtime.base import Arrays
from shipyard.streams.broker import Message, Record, Sink, StreamUrl, open_sink, open_source
from shipyard.streams.consumer import StreamConsumer, StreamOptions
from shipyard.streams.naming import dead_letter_url
from shipyard.streams.scoring import decode_message, score

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def lr(registry: Registry) -> LoadedModel:
    data = iris_rows(300, seed=1)
    model = LogisticRegression(max_iter=500).fit(data[FEATURES], data["id"] % 3)
    registry.register(model, "lr", sample=data[FEATURES].head())
    return registry.load("lr")


def _record(i: int) -> dict[str, float]:
    rng = np.random.default_rng(i)
    return {f: float(v) for f, v in zip(FEATURES, rng.uniform(0.5, 7.0, len(FEATURES)).round(2), strict=True)}


def _message(i: int, value: Any = None) -> Message:
    raw = value if isinstance(value, bytes) else orjson.dumps(value if value is not None else _record(i))
    return Message(id=str(i), value=raw, key=f"k{i}", timestamp=1_700_000_000.0)


async def _run(model: LoadedModel, arrays: Arrays) -> Arrays:
    return model.run(arrays)


# -- URLs ------------------------------------------------------------------------------------------


def test_urls_parse_topic_options_and_credentials_and_never_print_the_password() -> None:
    url = StreamUrl.parse("kafka://u:s3cret@h1:9092,h2:9092/pay%2Fments?session.timeout.ms=3000")
    assert (url.hosts, url.topic, url.username, url.password) == ("h1:9092,h2:9092", "pay/ments", "u", "s3cret")
    assert url.options == {"session.timeout.ms": "3000"}
    assert "s3cret" not in str(url)
    assert str(dead_letter_url(url)) == "kafka://h1:9092,h2:9092/pay/ments.dlq"
    assert StreamUrl.parse("local://requests").topic == "requests"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://h/x", "scheme must be one of"),
        ("redis://h:6379", "names no topic"),
        ("local://x?ack_wait=soon", "must be a number"),
        ("local://x?colour=blue", "unknown option 'colour' for local:// URLs; valid options: ack_wait, path"),
        ("local://x?ack_wiat=3", "unknown option 'ack_wiat' for local:// URLs; did you mean 'ack_wait'?"),
    ],
)
def test_bad_urls_say_what_is_wrong(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        open_source(url, group="g", consumer="c")


# -- scoring ----------------------------------------------------------------------------------------


def test_each_message_shape_decodes_and_the_output_shape_follows_it(lr: LoadedModel) -> None:
    one = decode_message(_message(1), lr)
    many = decode_message(_message(2, [_record(2), _record(3)]), lr)
    body = decode_message(_message(3, {"instances": [_record(4)]}), lr)
    assert (one.many, many.many, body.many) == (False, True, True)
    assert len(many.arrays[FEATURES[0]]) == 2


async def test_a_batch_is_one_model_call_and_bad_messages_become_dead_letters(lr: LoadedModel) -> None:
    calls: list[int] = []

    async def counting(model: LoadedModel, arrays: Arrays) -> Arrays:
        calls.append(len(next(iter(arrays.values()))))
        return model.run(arrays)

    good = [_message(i) for i in range(10)]
    bad = [_message(100, b"\xff"), _message(101, {FEATURES[0]: "x"}), _message(102, 42)]
    scored = await score([*good[:5], *bad, *good[5:]], lr, counting, source="local://in", received_at=1.0)
    assert calls == [10]
    expected = lr.predict([_record(i) for i in range(10)]).tolist()
    results = [orjson.loads(r.value) for r in scored.results]
    assert [r["prediction"] for r in results] == expected
    assert [r["id"] for r in results] == [str(i) for i in range(10)]
    assert [r.key for r in scored.results] == [f"k{i}" for i in range(10)]
    dead = [orjson.loads(r.value) for r in scored.dead_letters]
    assert [d["id"] for d in dead] == ["100", "101", "102"]
    assert dead[0]["payload_base64"] == "/w==" and "not valid JSON" in dead[0]["reason"]
    assert dead[1]["field"] == FEATURES[0] and dead[1]["payload"] == orjson.dumps({FEATURES[0]: "x"}).decode()
    assert "JSON int" in dead[2]["reason"]
    assert all(r.headers["shipyard-input-id"] for r in scored.results + scored.dead_letters)


async def test_a_poison_message_fails_alone_and_its_batch_mates_are_predicted(lr: LoadedModel) -> None:
    poison = _record(7)

    async def fails_on_poison(model: LoadedModel, arrays: Arrays) -> Arrays:
        if any(np.isclose(arrays[FEATURES[0]], poison[FEATURES[0]])):
            raise InferenceError("the model cannot handle this row")
        return model.run(arrays)

    scored = await score([_message(i) for i in range(5, 10)], lr, fails_on_poison, source="s", received_at=1.0)
    assert [orjson.loads(r.value)["id"] for r in scored.results] == ["5", "6", "8", "9"]
    (dead,) = [orjson.loads(r.value) for r in scored.dead_letters]
    assert dead["id"] == "7" and dead["error"] == "InferenceError"


async def test_a_model_that_is_not_ready_fails_the_whole_batch_for_a_retry(lr: LoadedModel) -> None:
    async def down(model: LoadedModel, arrays: Arrays) -> Arrays:
        raise ModelNotReady("worker restarting")

    with pytest.raises(ModelNotReady):
        await score([_message(1)], lr, down, source="s", received_at=1.0)


# -- the loop on the embedded broker -------------------------------------------------------------


class FlakySink(Sink):
    """A real embedded sink that refuses the first ``failures`` sends."""

    def __init__(self, inner: Sink, failures: int) -> None:
        self.inner, self.url, self.failures, self.refused = inner, inner.url, failures, 0

    async def start(self) -> None:
        await self.inner.start()

    async def send(self, records: Sequence[Record]) -> None:
        if self.refused < self.failures:
            self.refused += 1
            raise BrokerError("broker unavailable (injected)")
        await self.inner.send(records)

    async def close(self) -> None:
        await self.inner.close()


class Streams:
    def __init__(self, folder: Path) -> None:
        self.path = folder / "streams.db"

    def url(self, topic: str) -> str:
        return f"local://{topic}?path={self.path}&ack_wait=60"

    async def produce(self, topic: str, messages: list[Any]) -> None:
        sink = open_sink(self.url(topic))
        await sink.start()
        await sink.send([Record(orjson.dumps(m), key=f"k{i}") for i, m in enumerate(messages)])
        await sink.close()

    async def read(self, topic: str) -> list[dict[str, Any]]:
        source = open_source(self.url(topic), group=f"reader-{id(self)}", consumer="reader")
        await source.start()
        out = [orjson.loads(m.value) for m in await source.fetch(100_000, 0)]
        await source.close()
        return out

    async def unfinished(self, topic: str, group: str) -> int:
        source = open_source(self.url(topic), group=group, consumer="probe")
        await source.start()
        lag = await source.lag()
        await source.close()
        assert lag is not None
        return lag

    def consumer(self, model: LoadedModel, *, sink: Sink | None = None, run: Any = _run,
                 **options: Any) -> StreamConsumer:
        async def provider() -> LoadedModel:
            return model

        return StreamConsumer(
            open_source(self.url("in"), group="g", consumer="c1"),
            sink or open_sink(self.url("out")),
            open_sink(self.url("in.dlq")),
            provider,
            run,
            StreamOptions(**{"poll_seconds": 0.05, "lag_interval_seconds": 0.05, **options}),
            consumer_name="c1",
        )


async def _until(condition: Any, seconds: float = 30.0) -> None:
    async with asyncio.timeout(seconds):
        while not await condition():
            await asyncio.sleep(0.02)


async def test_a_sink_outage_is_waited_out_and_nothing_is_acknowledged_before_it_ends(
    lr: LoadedModel, tmp_path: Path
) -> None:
    streams = Streams(tmp_path)
    await streams.produce("in", [_record(i) for i in range(20)])
    flaky = FlakySink(open_sink(streams.url("out")), failures=3)
    consumer = streams.consumer(lr, sink=flaky, batch_size=50)
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))

    async def refused_and_unacknowledged() -> bool:
        return flaky.refused >= 2 and await streams.unfinished("in", "g") == 20

    await _until(refused_and_unacknowledged)

    async def all_out() -> bool:
        return len(await streams.read("out")) == 20

    await _until(all_out)
    stop.set()
    stats = await task
    assert (stats.predicted, stats.unfinished) == (20, 0)
    assert await streams.unfinished("in", "g") == 0
    retries = consumer.metrics.registry.get_sample_value(
        "shipyard_stream_retries_total", {"source": consumer.name, "stage": "sink"}
    )
    assert retries == 3


async def test_in_flight_messages_stay_bounded_while_the_model_is_slow(lr: LoadedModel, tmp_path: Path) -> None:
    streams = Streams(tmp_path)
    await streams.produce("in", [_record(i) for i in range(400)])
    peak = 0

    async def slow(model: LoadedModel, arrays: Arrays) -> Arrays:
        await asyncio.sleep(0.02)
        return model.run(arrays)

    consumer = streams.consumer(lr, run=slow, batch_size=10, max_in_flight=2, max_wait_ms=0)
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))

    async def watch() -> bool:
        nonlocal peak
        peak = max(peak, consumer.in_flight)
        return consumer.stats.predicted >= 400

    await _until(watch)
    stop.set()
    await task
    # queued batches + the ones being collected, scored and sent
    assert 0 < peak <= (2 + 3) * 10


async def test_stop_finishes_fetched_batches_and_acknowledges_exactly_what_was_sent(
    lr: LoadedModel, tmp_path: Path
) -> None:
    streams = Streams(tmp_path)
    await streams.produce("in", [_record(i) for i in range(300)])

    async def slow(model: LoadedModel, arrays: Arrays) -> Arrays:
        await asyncio.sleep(0.01)
        return model.run(arrays)

    consumer = streams.consumer(lr, run=slow, batch_size=5, max_in_flight=3, max_wait_ms=0)
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))

    async def some_done() -> bool:
        return consumer.stats.predicted >= 50

    await _until(some_done)
    stop.set()
    stats = await task
    out = await streams.read("out")
    assert stats.unfinished == 0 and stats.predicted == len(out) < 300
    assert await streams.unfinished("in", "g") == 300 - len(out)
    assert sorted(int(r["id"]) for r in out) == sorted({int(r["id"]) for r in out})  # no duplicates


async def test_lag_is_exported_as_a_prometheus_gauge(lr: LoadedModel, tmp_path: Path) -> None:
    from prometheus_client import generate_latest

    streams = Streams(tmp_path)
    await streams.produce("in", [_record(i) for i in range(30)])
    consumer = streams.consumer(lr)
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))

    async def drained() -> bool:
        text = generate_latest(consumer.metrics.registry).decode()
        return consumer.stats.predicted == 30 and 'shipyard_stream_lag_messages{source="local://in"} 0.0' in text

    await _until(drained)
    stop.set()
    await task
    text = generate_latest(consumer.metrics.registry).decode()
    assert 'shipyard_stream_messages_total{outcome="predicted",source="local://in"} 30.0' in text


async def test_fragments_that_would_join_into_records_are_each_dead_letters(lr: LoadedModel) -> None:
    # Each message alone is not a record; glued into one JSON array they would read as two.
    first = orjson.dumps(_record(1)).decode()
    second = orjson.dumps(_record(2)).decode()
    head, tail = second.split(",", 1)
    parts = [f"{first},{head}".encode(), tail.encode()]
    scored = await score([_message(i, v) for i, v in enumerate(parts)], lr, _run, source="s", received_at=1.0)
    assert scored.results == []
    assert [orjson.loads(r.value)["id"] for r in scored.dead_letters] == ["0", "1"]


class SlowCountingSink(Sink):
    """A real embedded sink whose sends take a while, recording how many records each carried."""

    def __init__(self, inner: Sink) -> None:
        self.inner, self.url, self.sizes = inner, inner.url, []

    async def start(self) -> None:
        await self.inner.start()

    async def send(self, records: Sequence[Record]) -> None:
        self.sizes.append(len(records))
        await asyncio.sleep(0.05)
        await self.inner.send(records)

    async def close(self) -> None:
        await self.inner.close()


async def test_batches_scored_while_the_sink_is_busy_go_out_together_in_fetch_order(
    lr: LoadedModel, tmp_path: Path
) -> None:
    streams = Streams(tmp_path)
    await streams.produce("in", [_record(i) for i in range(200)])
    sink = SlowCountingSink(open_sink(streams.url("out")))
    consumer = streams.consumer(lr, sink=sink, batch_size=10, max_in_flight=4, max_wait_ms=0)
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))

    async def all_out() -> bool:
        return consumer.stats.predicted >= 200

    await _until(all_out)
    stop.set()
    stats = await task
    out = await streams.read("out")
    assert [int(r["id"]) for r in out] == sorted(int(r["id"]) for r in out)  # sent in fetch order
    assert len(out) == 200 and stats.batches == 20 and stats.unfinished == 0
    assert max(sink.sizes) > 10 and len(sink.sizes) < 20  # several batches per send (and per ack)
    assert max(sink.sizes) <= (4 + 3) * 10  # never more than the unacknowledged bound
    assert await streams.unfinished("in", "g") == 0
