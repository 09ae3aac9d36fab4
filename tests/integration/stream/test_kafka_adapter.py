"""The Kafka adapter against a real Kafka-protocol broker (Tansu), checked through confluent-kafka's raw clients."""

from __future__ import annotations

import asyncio
import logging
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import TypeVar

import pytest

from shipyard.errors import ConfigError
from shipyard.streams.broker import BrokerError, Message, Record, Sink, Source, open_sink, open_source
from shipyard.streams.kafka import KafkaSink, KafkaSource
from shipyard.testing import free_port
from shipyard.testing.kafka import KafkaUnavailable

from .harness_kafka import KafkaHarness, start

pytestmark = pytest.mark.integration

T = TypeVar("T")
GROUP = "scorers"
"""For tests that never join. Joining ones get a group of their own: on Tansu 0.6 a group whose
leader leaves during a rebalance (two members closing one after the other) takes no new members."""


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaHarness]:
    with ExitStack() as stack:
        try:
            h = stack.enter_context(start(tmp_path_factory.mktemp("kafka")))
        except KafkaUnavailable as exc:
            pytest.skip(str(exc))
        yield h


@pytest.fixture
def topic() -> str:
    return f"in.{uuid.uuid4().hex[:8]}"


@pytest.fixture
def group(topic: str) -> str:
    return f"scorers-{topic}"


def run(coro: Awaitable[T]) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro, 40)  # a hang fails the test instead of stalling the run

    return asyncio.run(bounded())


async def started(url: str, consumer: str, group: str) -> KafkaSource:
    src = open_source(url, group=group, consumer=consumer)
    assert isinstance(src, KafkaSource)
    await src.start()
    return src


async def fetch_until(src: KafkaSource, count: int, *, limit: float = 15.0) -> list[Message]:
    """Fetch until ``count`` messages came (or ``limit`` seconds passed)."""
    got: list[Message] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while len(got) < count and loop.time() < deadline:
        got += await src.fetch(count - len(got), 0.5)
    return got


async def nothing_after(src: KafkaSource, first: Awaitable[list[Message]]) -> list[Message]:
    """What ``first`` fetched, plus anything else that comes within a second (there should be nothing)."""
    got = await first
    more: list[Message] = await src.fetch(100, 1.0)
    return got + more


async def closing(src: KafkaSource, body: Callable[[KafkaSource], Awaitable[T]]) -> T:
    try:
        return await body(src)
    finally:
        await src.close()


async def keep_polling(src: KafkaSource, until: Callable[[], bool], *, limit: float = 20.0) -> list[Message]:
    """Fetch (without acking) until ``until()``: a group rebalance only completes while every member polls."""
    got: list[Message] = []
    deadline = asyncio.get_running_loop().time() + limit
    while not until():
        assert asyncio.get_running_loop().time() < deadline, "the group did not settle in time"
        got += await src.fetch(100, 0.1)
    return got


def split(a: KafkaSource, b: KafkaSource, partitions: int) -> Callable[[], bool]:
    def settled() -> bool:
        mine, theirs = set(a.assignment), set(b.assignment)
        return bool(mine) and bool(theirs) and not mine & theirs and len(mine | theirs) == partitions

    return settled


async def join_second(
    a: KafkaSource, url: str, partitions: int
) -> tuple[KafkaSource, list[Message], list[Message]]:
    """Start member "b" while "a" keeps polling; return b and what each fetched until the split settled."""
    b_task = asyncio.create_task(started(url, "b", a.group))
    got_a = await keep_polling(a, b_task.done)
    b = await b_task
    both = split(a, b, partitions)
    more_a, got_b = await asyncio.gather(keep_polling(a, both), keep_polling(b, both))
    return b, got_a + more_a, got_b


def test_sink_writes_records_in_order_with_keys_and_headers(harness: KafkaHarness, topic: str) -> None:
    records = [Record(b'{"x": %d}' % i, key=f"k{i}", headers={"source_id": f"0-{i}", "n": "é"}) for i in range(5)]
    records.append(Record(b"no key"))

    async def go() -> None:
        snk = open_sink(harness.url(topic))
        assert isinstance(snk, KafkaSink)
        await snk.start()
        try:
            await snk.send(records[:3])
            await snk.send(records[3:])
            await snk.send([])
        finally:
            await snk.close()

    run(go())
    assert harness.read_all(topic) == [(r.key, r.value) for r in records]
    raw = harness.records(topic)
    assert [m.offset() for m in raw] == list(range(6))
    assert dict(raw[2].headers()) == {"source_id": b"0-2", "n": "é".encode()}
    assert raw[5].headers() is None and raw[5].key() is None


def test_fetch_returns_messages_with_stable_ids_and_a_closed_consumers_come_again(
    harness: KafkaHarness, topic: str, group: str
) -> None:
    harness.produce(topic, [(f"k{i}", b"v%d" % i) for i in range(5)] + [(None, b"keyless")],
                    headers={"trace": "abc"})
    url = harness.url(topic)

    async def go() -> tuple[list[Message], list[Message]]:
        first = await closing(await started(url, "c1", group), lambda s: fetch_until(s, 6))
        again = await closing(await started(url, "c2", group), lambda s: fetch_until(s, 6))
        return first, again

    before = time.time()
    first, again = run(go())
    assert [m.id for m in first] == [f"0-{i}" for i in range(6)]
    assert [(m.key, m.value) for m in first] == [(f"k{i}", b"v%d" % i) for i in range(5)] + [(None, b"keyless")]
    assert all(m.headers == {"trace": "abc"} for m in first)
    assert all(m.timestamp is not None and before - 60 < m.timestamp < time.time() + 60 for m in first)
    # nothing was acknowledged: the next member of the group gets the same messages, same ids
    assert [(m.id, m.key, m.value) for m in again] == [(m.id, m.key, m.value) for m in first]


def test_acked_messages_are_not_delivered_again(harness: KafkaHarness, topic: str, group: str) -> None:
    harness.produce(topic, [(f"k{i}", b"%d" % i) for i in range(5)])
    url = harness.url(topic)

    async def first_member(src: KafkaSource) -> list[str]:
        got = await fetch_until(src, 5)
        await src.ack(got[:3])
        return [m.id for m in got]

    async def go() -> tuple[list[str], int, list[str]]:
        first = await closing(await started(url, "c1", group), first_member)
        left = harness.unfinished(topic, group)
        rest = await closing(await started(url, "c2", group), lambda s: nothing_after(s, fetch_until(s, 2)))
        return first, left, [m.id for m in rest]

    first, left, rest = run(go())
    assert first == [f"0-{i}" for i in range(5)]
    assert left == 2
    assert rest == ["0-3", "0-4"]


KILLED_MEMBER = """
import asyncio, sys
from pathlib import Path
from shipyard.streams.broker import open_source

async def main() -> None:
    src = open_source(sys.argv[1], group=sys.argv[2], consumer="doomed")
    await src.start()
    got = []
    while len(got) < int(sys.argv[3]):
        got += await src.fetch(100, 0.5)
    Path(sys.argv[4]).write_text(" ".join(m.id for m in got))
    await asyncio.sleep(3600)  # holds the messages, unacknowledged, until SIGKILL

asyncio.run(main())
"""


def test_unacked_messages_of_a_killed_consumer_go_to_the_next_member(
    harness: KafkaHarness, topic: str, group: str, tmp_path: Path
) -> None:
    harness.produce(topic, [(f"k{i}", b"%d" % i) for i in range(4)])
    url, ids_file, log = harness.url(topic), tmp_path / "ids", tmp_path / "doomed.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-c", KILLED_MEMBER, url, group, "4", str(ids_file)],
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while not ids_file.exists():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "the doomed consumer never fetched its messages"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    held = ids_file.read_text().split()
    assert held == ["0-0", "0-1", "0-2", "0-3"]

    # the broker drops the dead member after session.timeout.ms; its partition comes to the next one
    again = run(closing_after_start(harness.url(topic), group, lambda s: fetch_until(s, 4)))
    assert [m.id for m in again] == held


async def closing_after_start(url: str, group: str, body: Callable[[KafkaSource], Awaitable[T]]) -> T:
    return await closing(await started(url, "c2", group), body)


def test_two_consumers_in_one_group_split_the_partitions_without_overlap(
    harness: KafkaHarness, topic: str, group: str
) -> None:
    harness.create_topic(topic, partitions=2)
    url = harness.url(topic)

    async def go() -> tuple[list[Message], list[Message]]:
        a = await started(url, "a", group)
        try:
            b, early_a, early_b = await join_second(a, url, 2)
            try:
                assert early_a == [] and early_b == []
                await asyncio.to_thread(harness.produce, topic, [(f"k{i}", b"%d" % i) for i in range(30)])
                got: dict[str, list[Message]] = {"a": [], "b": []}

                async def drain(name: str, src: KafkaSource) -> None:
                    while sum(map(len, got.values())) < 30:
                        batch = await src.fetch(100, 0.2)
                        await src.ack(batch)
                        got[name] += batch

                await asyncio.wait_for(asyncio.gather(drain("a", a), drain("b", b)), 15)
                return got["a"], got["b"]
            finally:
                await b.close()
        finally:
            await a.close()

    got_a, got_b = run(go())
    ids_a, ids_b = {m.id for m in got_a}, {m.id for m in got_b}
    assert got_a and got_b
    assert not ids_a & ids_b
    assert len(ids_a) + len(ids_b) == len(got_a) + len(got_b) == 30
    assert harness.unfinished(topic, group) == 0


def test_a_partition_taken_away_in_a_rebalance_is_not_committed_and_comes_again(
    harness: KafkaHarness, topic: str, group: str, caplog: pytest.LogCaptureFixture
) -> None:
    harness.create_topic(topic, partitions=2)
    harness.produce(topic, [(f"k{i}", b"%d" % i) for i in range(20)])
    url = harness.url(topic)

    async def go() -> tuple[list[Message], list[int], list[Message]]:
        a = await started(url, "a", group)
        try:
            held = await fetch_until(a, 20)
            b, _, early_b = await join_second(a, url, 2)
            try:
                with caplog.at_level(logging.WARNING, "shipyard.streams.kafka"):
                    await a.ack(held)  # partly for a partition that is b's now: skipped, not an error
                got_b = early_b + await fetch_until(b, 1, limit=3.0)
                got_b += await b.fetch(100, 0.5)
                return held, b.assignment, got_b
            finally:
                await b.close()
        finally:
            await a.close()

    held, b_partitions, got_b = run(go())
    moved = [m.id for m in held if int(m.id.split("-")[0]) in b_partitions]
    assert moved
    assert "moved to another consumer" in caplog.text
    assert sorted(m.id for m in got_b) == sorted(moved)  # the same messages, the same ids
    assert harness.unfinished(topic, group) >= len(moved)


def test_lag_counts_down_to_zero_as_messages_are_acked(harness: KafkaHarness, topic: str, group: str) -> None:
    harness.produce(topic, [(f"k{i}", b"%d" % i) for i in range(6)])

    async def body(src: KafkaSource) -> list[int | None]:
        got = await fetch_until(src, 6)
        lags = [await src.lag()]
        await src.ack(got[:2])
        lags.append(await src.lag())
        await src.ack(got[2:])
        lags.append(await src.lag())
        return lags

    assert run(closing_after_start(harness.url(topic), group, body)) == [6, 4, 0]
    assert harness.unfinished(topic, group) == 0


def test_fetch_on_an_empty_topic_returns_nothing(harness: KafkaHarness, topic: str, group: str) -> None:
    async def body(src: KafkaSource) -> list[Message]:
        return await asyncio.wait_for(src.fetch(10, 0.5), 10)

    assert run(closing_after_start(harness.url(topic), group, body)) == []
    assert harness.partitions(topic) == [0]  # the source created the topic


def test_a_cancelled_fetch_loses_no_message(harness: KafkaHarness, topic: str, group: str) -> None:
    async def body(src: KafkaSource) -> list[str]:
        pending = asyncio.create_task(src.fetch(10, 5))
        await asyncio.sleep(0.3)
        await asyncio.to_thread(harness.produce, topic, [(f"k{i}", b"%d" % i) for i in range(3)])
        pending.cancel()
        try:
            first = await pending
        except asyncio.CancelledError:
            first = []
        got = first + await fetch_until(src, 3 - len(first))
        await src.ack(got)
        return [m.id for m in got]

    assert run(closing_after_start(harness.url(topic), group, body)) == ["0-0", "0-1", "0-2"]
    assert harness.unfinished(topic, group) == 0


def test_a_missing_topic_is_created_with_the_partitions_option(harness: KafkaHarness, topic: str) -> None:
    async def go() -> None:
        snk = open_sink(harness.url(topic, partitions="3"))
        await snk.start()
        await snk.close()
        snk = open_sink(harness.url(topic, partitions="5"))  # an existing topic is left as it is
        await snk.start()
        await snk.close()

    run(go())
    assert harness.partitions(topic) == [0, 1, 2]


@pytest.mark.parametrize(
    ("query", "named"),
    [
        ("bogus=1", "bogus"),
        ("ack_wait=2", "ack_wait"),
        ("enable.auto.commit=true", "enable.auto.commit"),
        ("group.id=x", "group.id"),
        ("partitions=0", "partitions"),
        ("partitions=two", "partitions"),
    ],
)
def test_a_bad_url_option_is_a_config_error_naming_it(query: str, named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        open_source(f"kafka://127.0.0.1:9/t?{query}", group=GROUP, consumer="c1")
    with pytest.raises(ConfigError, match=named):
        open_sink(f"kafka://127.0.0.1:9/t?{query}")


def test_a_setting_librdkafka_rejects_is_a_config_error(harness: KafkaHarness, topic: str) -> None:
    src = open_source(harness.url(topic, **{"no.such.setting": "1"}), group=GROUP, consumer="c1")
    with pytest.raises(ConfigError, match="no.such.setting"):
        run(src.start())


def test_an_unreachable_broker_is_a_broker_error_not_a_hang() -> None:
    url = f"kafka://127.0.0.1:{free_port()}/nowhere"

    async def attempt(end: Source | Sink) -> BaseException | None:
        try:
            await asyncio.wait_for(end.start(), 20)
        except BaseException as exc:
            return exc
        finally:
            await end.close()
        return None

    async def go() -> list[BaseException | None]:
        ends = (open_source(url, group=GROUP, consumer="c1"), open_sink(url))
        return list(await asyncio.gather(*(attempt(end) for end in ends)))

    for error in run(go()):
        assert isinstance(error, BrokerError), repr(error)
        assert "kafka://127.0.0.1" in str(error) and "nowhere" in str(error)
