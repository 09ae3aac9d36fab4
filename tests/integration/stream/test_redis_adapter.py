"""The Redis Streams adapter against a real redis-server (checked through redis-py's raw client)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import ExitStack
from typing import TypeVar

import pytest

from shipyard.errors import ConfigError
from shipyard.streams.broker import BrokerError, Message, Record, StreamUrl, open_sink, open_source
from shipyard.streams.redis import RedisSink, RedisSource
from shipyard.testing import free_port
from shipyard.testing.redis import RedisUnavailable, redis_server

from .harness_redis import RedisHarness, start

pytestmark = pytest.mark.integration

T = TypeVar("T")
GROUP = "scorers"


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisHarness]:
    with ExitStack() as stack:
        try:
            h = stack.enter_context(start(tmp_path_factory.mktemp("redis")))
        except RedisUnavailable as exc:
            pytest.skip(str(exc))
        yield h


@pytest.fixture
def topic() -> str:
    return f"in/{uuid.uuid4().hex[:8]}"  # a slash: the path is the key, URL-decoded


def run(coro: Awaitable[T]) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro, 30)  # a hang fails the test instead of stalling the run

    return asyncio.run(bounded())


async def started(url: str, consumer: str = "c1", group: str = GROUP) -> RedisSource:
    src = open_source(url, group=group, consumer=consumer)
    assert isinstance(src, RedisSource)
    await src.start()
    return src


async def fetch_until(src: RedisSource, count: int, *, limit: float = 15.0) -> list[Message]:
    """Fetch until ``count`` messages came (or ``limit`` seconds passed)."""
    got: list[Message] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while len(got) < count and loop.time() < deadline:
        got += await src.fetch(count - len(got), 0.5)
    return got


async def closing(src: RedisSource, body: Callable[[RedisSource], Awaitable[T]]) -> T:
    try:
        return await body(src)
    finally:
        await src.close()


def test_sink_writes_entries_in_order_with_key_and_headers(harness: RedisHarness, topic: str) -> None:
    records = [Record(b'{"x": %d}' % i, key=f"k{i}", headers={"source_id": f"1-{i}"}) for i in range(5)]
    records.append(Record(b"no key"))

    async def go() -> None:
        snk = open_sink(harness.url(topic))
        assert isinstance(snk, RedisSink)
        await snk.start()
        try:
            await snk.send(records[:3])
            await snk.send(records[3:])
            await snk.send([])
        finally:
            await snk.close()

    run(go())
    assert harness.read_all(topic) == [(r.key, r.value) for r in records]
    fields = [f for _, f in harness.entries(topic)]
    assert fields[0] == {b"value": b'{"x": 0}', b"key": b"k0", b"source_id": b"1-0"}
    assert fields[-1] == {b"value": b"no key"}


def test_fetch_returns_messages_with_entry_ids_keys_values_and_timestamps(harness: RedisHarness, topic: str) -> None:
    produced = [("a", b"1"), (None, b"2"), ("c", b"3")]
    harness.produce(topic, produced)
    harness.client.xadd(topic, {"value": b"4", "key": "d", "trace": "t-1"})
    raw = harness.entries(topic)

    async def go() -> list[Message]:
        return await closing(await started(harness.url(topic)), lambda s: fetch_until(s, 4))

    got = run(go())
    assert [m.id for m in got] == [i for i, _ in raw]
    assert [(m.key, m.value) for m in got] == [*produced, ("d", b"4")]
    assert got[3].headers == {"trace": "t-1"}
    assert got[0].headers == {}
    assert [m.timestamp for m in got] == [int(i.split("-")[0]) / 1000 for i, _ in raw]


def test_acked_messages_are_not_delivered_again(harness: RedisHarness, topic: str) -> None:
    harness.produce(topic, [(None, b"%d" % i) for i in range(6)])
    url = harness.url(topic, ack_wait="0.5")

    async def go() -> tuple[list[Message], list[Message]]:
        first = await started(url, "c1")
        got = await fetch_until(first, 6)
        await first.ack(got)
        await first.close()
        second = await started(url, "c2")
        await asyncio.sleep(0.6)  # longer than ack_wait: nothing may be claimable
        again = await closing(second, lambda s: s.fetch(10, 0.5))
        return got, again

    got, again = run(go())
    assert len(got) == 6
    assert again == []
    assert harness.unfinished(topic, GROUP) == 0


def test_unacked_messages_of_a_closed_consumer_go_to_another_after_ack_wait(harness: RedisHarness, topic: str) -> None:
    harness.produce(topic, [("k", b"%d" % i) for i in range(4)])
    url = harness.url(topic, ack_wait="1")

    async def go() -> tuple[list[Message], list[Message]]:
        first = await started(url, "c1")
        got = await fetch_until(first, 4)
        await first.ack(got[:1])
        await first.close()  # the other three were never acked
        second = await started(url, "c2")
        return got, await closing(second, lambda s: fetch_until(s, 3))

    got, redelivered = run(go())
    assert [m.id for m in redelivered] == [m.id for m in got[1:]]
    assert [m.value for m in redelivered] == [b"1", b"2", b"3"]


def test_entries_of_a_killed_consumer_are_claimed_with_the_same_ids(harness: RedisHarness, topic: str) -> None:
    harness.produce(topic, [(None, b"a"), (None, b"b")])
    url = harness.url(topic, ack_wait="1")

    async def go() -> list[Message]:
        src = await started(url, "survivor")
        # A consumer that read the entries and died: it never acks and never comes back.
        dead = harness.client.xreadgroup(GROUP, "dead", {topic: ">"})
        assert dead
        return await closing(src, lambda s: fetch_until(s, 2))

    claimed = run(go())
    assert [m.id for m in claimed] == [i for i, _ in harness.entries(topic)]
    pending = harness.client.xpending_range(topic, GROUP, "-", "+", 10)
    assert {p["consumer"] for p in pending} == {b"survivor"}


def test_restart_with_the_same_consumer_name_rereads_its_pending_entries_at_once(
    harness: RedisHarness, topic: str
) -> None:
    harness.produce(topic, [(None, b"%d" % i) for i in range(3)])
    url = harness.url(topic, ack_wait="60")  # no claim could bring them back during this test

    async def go() -> tuple[list[Message], list[Message]]:
        first = await started(url, "worker-1")
        got = await fetch_until(first, 3)
        await first.close()
        again = await started(url, "worker-1")
        return got, await closing(again, lambda s: s.fetch(10, 0.1))

    got, again = run(go())
    assert [m.id for m in again] == [m.id for m in got]


def test_a_cancelled_fetch_loses_nothing(harness: RedisHarness, topic: str) -> None:
    url = harness.url(topic, ack_wait="60")

    async def go() -> tuple[list[Message], list[Message]]:
        src = await started(url, "c1")
        try:
            assert await src.fetch(10, 0.05) == []
            blocked = asyncio.create_task(src.fetch(10, 5))
            await asyncio.sleep(0.2)
            # As if Redis delivered to this consumer and the reply was lost with the cancelled call:
            harness.produce(topic, [(None, b"x"), (None, b"y")])
            harness.client.xreadgroup(GROUP, "c1", {topic: ">"})
            blocked.cancel()
            with pytest.raises(asyncio.CancelledError):
                await blocked
            recovered = await src.fetch(10, 0.1)
            harness.produce(topic, [(None, b"z")])
            fresh = await fetch_until(src, 1)  # the pooled connection still works
            await src.ack([*recovered, *fresh])
            return recovered, fresh
        finally:
            await src.close()

    recovered, fresh = run(go())
    assert [m.value for m in recovered] == [b"x", b"y"]
    assert [m.value for m in fresh] == [b"z"]
    assert harness.unfinished(topic, GROUP) == 0


def test_two_consumers_split_the_messages_without_overlap(harness: RedisHarness, topic: str) -> None:
    harness.produce(topic, [(None, b"%d" % i) for i in range(40)])
    url = harness.url(topic)

    async def consume(src: RedisSource, seen: list[Message], done: asyncio.Event) -> None:
        while not done.is_set():
            batch = await src.fetch(3, 0.2)
            seen += batch
            await src.ack(batch)
            await asyncio.sleep(0)  # let the other consumer in
            if sum(len(s) for s in all_seen) >= 40:
                done.set()

    all_seen: list[list[Message]] = [[], []]

    async def go() -> None:
        a, b = await started(url, "a"), await started(url, "b")
        done = asyncio.Event()
        try:
            await asyncio.gather(consume(a, all_seen[0], done), consume(b, all_seen[1], done))
        finally:
            await a.close()
            await b.close()

    run(go())
    ids_a, ids_b = {m.id for m in all_seen[0]}, {m.id for m in all_seen[1]}
    assert ids_a and ids_b
    assert not ids_a & ids_b
    assert ids_a | ids_b == {i for i, _ in harness.entries(topic)}
    assert harness.unfinished(topic, GROUP) == 0
    assert harness.client.xinfo_consumers(topic, GROUP) == []  # nothing pending: both left the group


def test_lag_counts_down_to_zero_as_messages_are_acked(harness: RedisHarness, topic: str) -> None:
    harness.produce(topic, [(None, b"%d" % i) for i in range(10)])

    async def go() -> list[tuple[int | None, int]]:
        src = await started(harness.url(topic))
        seen = [(await src.lag(), harness.unfinished(topic, GROUP))]
        try:
            while True:
                batch = await src.fetch(4, 0.2)
                seen.append((await src.lag(), harness.unfinished(topic, GROUP)))  # fetched, not acked
                if not batch:
                    return seen
                await src.ack(batch)
                seen.append((await src.lag(), harness.unfinished(topic, GROUP)))
        finally:
            await src.close()

    seen = run(go())
    assert [lag for lag, _ in seen] == [10, 10, 6, 6, 2, 2, 0, 0]
    assert all(lag == raw for lag, raw in seen)


def test_lag_falls_back_to_counting_when_redis_cannot_say(harness: RedisHarness, topic: str) -> None:
    harness.produce(topic, [(None, b"%d" % i) for i in range(5)])

    async def go() -> int | None:
        src = await started(harness.url(topic))
        lag: int | None
        try:
            batch = await src.fetch(2, 0.2)
            await src.ack(batch[:1])
            first_left = harness.entries(topic)[2][0]
            harness.client.xdel(topic, first_left)  # after an XDEL, XINFO GROUPS reports lag as nil
            assert harness.client.xinfo_groups(topic)[0]["lag"] is None
            lag = await src.lag()
            return lag
        finally:
            await src.close()

    assert run(go()) == 1 + 2  # one pending + two undelivered


def test_fetch_on_an_empty_stream_returns_nothing(harness: RedisHarness, topic: str) -> None:
    async def go(src: RedisSource) -> tuple[list[Message], list[Message]]:
        return await src.fetch(10, 0.3), await src.fetch(10, 0)

    async def main() -> tuple[list[Message], list[Message]]:
        return await closing(await started(harness.url(topic)), go)

    assert run(main()) == ([], [])


def test_an_entry_without_a_value_field_reads_as_json_of_its_fields(harness: RedisHarness, topic: str) -> None:
    harness.client.xadd(topic, {"temperature": "21.5", "key": "sensor-1"})

    async def main() -> list[Message]:
        return await closing(await started(harness.url(topic)), lambda s: fetch_until(s, 1))

    (msg,) = run(main())
    assert json.loads(msg.value) == {"temperature": "21.5", "key": "sensor-1"}
    assert msg.key == "sensor-1"
    assert msg.headers == {"temperature": "21.5"}


def test_pending_entries_trimmed_away_are_dropped(harness: RedisHarness, topic: str) -> None:
    harness.produce(topic, [(None, b"old")])
    url = harness.url(topic, ack_wait="60")

    async def go() -> list[Message]:
        first = await started(url, "c1")
        assert len(await fetch_until(first, 1)) == 1
        await first.close()
        harness.client.xtrim(topic, maxlen=0)
        again = await started(url, "c1")
        return await closing(again, lambda s: s.fetch(10, 0.1))

    assert run(go()) == []
    assert harness.unfinished(topic, GROUP) == 0


def test_sink_maxlen_trims_the_stream(harness: RedisHarness, topic: str) -> None:
    async def go() -> None:
        snk = open_sink(harness.url(topic, maxlen="10"))
        await snk.start()
        try:
            for start_at in range(0, 600, 100):
                await snk.send([Record(b"%d" % i) for i in range(start_at, start_at + 100)])
        finally:
            await snk.close()

    run(go())
    left = harness.read_all(topic)
    assert 10 <= len(left) < 600  # approximate: Redis drops whole nodes of up to 100 entries
    assert left[-1] == (None, b"599")


def test_unknown_and_misplaced_options_are_config_errors(harness: RedisHarness, topic: str) -> None:
    with pytest.raises(ConfigError, match="linger"):
        open_source(harness.url(topic, linger="5"), group=GROUP, consumer="c")
    with pytest.raises(ConfigError, match="linger"):
        open_sink(harness.url(topic, linger="5"))
    with pytest.raises(ConfigError, match="maxlen"):
        open_source(harness.url(topic, maxlen="5"), group=GROUP, consumer="c")
    with pytest.raises(ConfigError, match="ack_wait"):
        open_source(harness.url(topic, ack_wait="soon"), group=GROUP, consumer="c")
    with pytest.raises(ConfigError, match="maxlen"):
        open_sink(harness.url(topic, maxlen="0"))
    # a sink URL derived from a source URL keeps ack_wait: accepted
    open_sink(StreamUrl.parse(harness.url(topic)).with_topic("dead-letters"))


def test_an_unreachable_server_is_a_broker_error_not_a_hang() -> None:
    url = f"redis://127.0.0.1:{free_port()}/in"

    async def go() -> None:
        with pytest.raises(BrokerError, match=r"127\.0\.0\.1"):
            await open_source(url, group=GROUP, consumer="c").start()
        with pytest.raises(BrokerError, match=r"127\.0\.0\.1"):
            await open_sink(url).start()

    run(go())


def test_credentials_in_the_url_are_used_and_never_shown(tmp_path_factory: pytest.TempPathFactory) -> None:
    with redis_server(tmp_path_factory.mktemp("redis-auth"), password="s3cret/pw") as base:
        good = f"{base}/in"
        bad = good.replace("s3cret%2Fpw", "wrong")

        async def go() -> list[Message]:
            snk = open_sink(good)
            await snk.start()
            try:
                await snk.send([Record(b"hello")])
            finally:
                await snk.close()
            with pytest.raises(BrokerError) as failed:
                await open_sink(bad).start()
            assert "wrong" not in str(failed.value)
            return await closing(await started(good), lambda s: fetch_until(s, 1))

        (msg,) = run(go())
        assert msg.value == b"hello"
        assert "s3cret" not in str(StreamUrl.parse(good))
