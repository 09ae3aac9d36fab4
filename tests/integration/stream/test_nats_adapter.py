"""The nats:// adapter against a real nats-server with JetStream (started once for the module)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Coroutine, Iterator
from contextlib import ExitStack, asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest

from shipyard.errors import ConfigError
from shipyard.streams.broker import BrokerError, Message, Record, Sink, Source, open_sink, open_source
from shipyard.testing import free_port
from shipyard.testing.nats import NatsUnavailable, nats_server

from .harness_nats import NatsHarness, start

pytestmark = pytest.mark.integration

S = TypeVar("S", Source, Sink)
# A guard against hangs, far above what any step needs; tests never assert timings.
HANG = 20.0


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsHarness]:
    with ExitStack() as stack:
        try:
            h = stack.enter_context(start(tmp_path_factory.mktemp("nats")))
        except NatsUnavailable as exc:
            pytest.skip(str(exc))
        yield h


@pytest.fixture
def subject() -> str:
    return f"test.{uuid.uuid4().hex[:12]}"


@asynccontextmanager
async def opened(endpoint: S) -> AsyncIterator[S]:
    await asyncio.wait_for(endpoint.start(), HANG)
    try:
        yield endpoint
    finally:
        await endpoint.close()


async def drain(source: Source, want: int, *, ack: bool = True) -> list[Message]:
    """Fetch until ``want`` messages came (or a fetch comes back empty), acking as we go."""
    got: list[Message] = []
    while len(got) < want:
        batch = await source.fetch(want - len(got), 2.0)
        if not batch:
            break
        if ack:
            await source.ack(batch)
        got += batch
    return got


def run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(coro, 60))


def test_sink_send_is_read_back_in_order_with_keys_and_headers(harness: NatsHarness, subject: str) -> None:
    records = [Record(f"v{i}".encode(), key=f"k{i}" if i % 2 else None, headers={"trace": str(i)}) for i in range(6)]

    async def main() -> None:
        async with opened(open_sink(harness.url(subject))) as sink:
            await sink.send(records)
            await sink.send([Record(b"last", key="k")])

    run(main())
    entries = harness.entries(subject)
    assert [(key, value) for _, key, value, _ in entries] == [(r.key, r.value) for r in records] + [("k", b"last")]
    assert [headers["trace"] for *_, headers in entries[:6]] == [str(i) for i in range(6)]
    assert "Nats-Msg-Id" not in entries[0][3]  # keys are not dedup ids
    assert harness.call(harness.js.find_stream_name_by_subject(subject)) == subject.replace(".", "_").upper()


def test_a_large_send_keeps_its_order(harness: NatsHarness, subject: str) -> None:
    records = [Record(str(i).encode(), key=str(i % 7)) for i in range(1000)]

    async def main() -> None:
        async with opened(open_sink(harness.url(subject))) as sink:
            await sink.send(records)

    run(main())
    assert harness.read_all(subject) == [(r.key, r.value) for r in records]


def test_fetch_returns_produced_messages_with_stable_fields(harness: NatsHarness, subject: str) -> None:
    harness.produce(subject, [("a", b"1"), (None, b"2"), ("c", b"3")])
    harness.call(harness.js.publish(subject, b"4", headers={"Nats-Msg-Id": "m-4", "x": "y"}))
    seqs = [seq for seq, *_ in harness.entries(subject)]

    async def main() -> None:
        async with opened(open_source(harness.url(subject), group="g", consumer="c1")) as source:
            got = await drain(source, 4)
        assert [m.value for m in got] == [b"1", b"2", b"3", b"4"]
        assert [m.key for m in got] == ["a", None, "c", "m-4"]
        assert [m.id for m in got] == [str(s) for s in seqs]
        assert got[0].headers == {"Shipyard-Key": "a"}
        assert got[3].headers == {"Nats-Msg-Id": "m-4", "x": "y"}
        for m in got:
            assert m.timestamp is not None and abs(m.timestamp - time.time()) < 300

    run(main())


def test_acked_messages_are_not_delivered_again(harness: NatsHarness, subject: str) -> None:
    harness.produce(subject, [(None, str(i).encode()) for i in range(5)])

    async def main() -> None:
        async with opened(open_source(harness.url(subject), group="g", consumer="c1")) as source:
            assert len(await drain(source, 5)) == 5
        async with opened(open_source(harness.url(subject), group="g", consumer="c2")) as source:
            assert await source.fetch(10, 0.5) == []
            assert await source.lag() == 0

    run(main())
    assert harness.unfinished(subject, "g") == 0


def test_unacked_messages_come_back_after_close_with_the_same_ids(harness: NatsHarness, subject: str) -> None:
    harness.produce(subject, [(f"k{i}", str(i).encode()) for i in range(4)])

    async def main() -> None:
        async with opened(open_source(harness.url(subject), group="g", consumer="c1")) as source:
            first = await drain(source, 4, ack=False)
            assert len(first) == 4
        # close() nak'd them: a new member gets them without waiting for ack_wait (which is 30 s here)
        async with opened(open_source(harness.url(subject, ack_wait="30"), group="g", consumer="c2")) as source:
            again = await drain(source, 4)
        assert [(m.id, m.key, m.value, m.timestamp) for m in again] == [
            (m.id, m.key, m.value, m.timestamp) for m in first
        ]

    run(main())
    assert harness.unfinished(subject, "g") == 0


def test_unacked_messages_go_to_another_member_after_ack_wait(harness: NatsHarness, subject: str) -> None:
    harness.produce(subject, [(None, str(i).encode()) for i in range(3)])
    url = harness.url(subject, ack_wait="1")

    async def main() -> None:
        async with opened(open_source(url, group="g", consumer="stuck")) as stuck, \
                opened(open_source(url, group="g", consumer="healthy")) as healthy:
            held = await drain(stuck, 3, ack=False)  # fetched, never acked: like a hung or killed process
            assert len(held) == 3
            assert await healthy.fetch(10, 0.2) == []  # still within ack_wait
            again: list[Message] = []
            deadline = time.monotonic() + HANG
            while len(again) < 3 and time.monotonic() < deadline:
                batch = await healthy.fetch(3 - len(again), 2.0)
                await healthy.ack(batch)
                again += batch
            assert sorted(m.id for m in again) == sorted(m.id for m in held)
            assert await healthy.lag() == 0

    run(main())


def test_two_members_of_a_group_split_the_messages(harness: NatsHarness, subject: str) -> None:
    harness.produce(subject, [(None, str(i).encode()) for i in range(60)])
    url = harness.url(subject)

    async def member(source: Source, seen: list[str]) -> None:
        while True:
            batch = await source.fetch(5, 0.5)
            if not batch:
                return
            seen += [m.id for m in batch]
            await source.ack(batch)
            await asyncio.sleep(0.01)  # let the other member's fetch in

    async def main() -> None:
        a: list[str] = []
        b: list[str] = []
        async with opened(open_source(url, group="pool", consumer="a")) as sa, \
                opened(open_source(url, group="pool", consumer="b")) as sb:
            await asyncio.gather(member(sa, a), member(sb, b))
        assert a and b
        assert not set(a) & set(b)
        assert len(a) + len(b) == 60

    run(main())
    assert harness.unfinished(subject, "pool") == 0


def test_lag_counts_down_to_zero_as_messages_are_acked(harness: NatsHarness, subject: str) -> None:
    harness.produce(subject, [(None, str(i).encode()) for i in range(10)])

    async def main() -> None:
        async with opened(open_source(harness.url(subject), group="g", consumer="c")) as source:
            assert await source.lag() == 10
            first = await source.fetch(4, 2.0)
            assert len(first) == 4
            assert await source.lag() == 10  # delivered but not acknowledged still counts
            await source.ack(first)
            assert await source.lag() == 6
            assert harness.unfinished(subject, "g") == 6
            rest = await drain(source, 6)
            assert len(rest) == 6
            assert await source.lag() == 0

    run(main())


def test_max_ack_pending_bounds_the_messages_in_flight(harness: NatsHarness, subject: str) -> None:
    harness.produce(subject, [(None, str(i).encode()) for i in range(10)])

    async def main() -> None:
        url = harness.url(subject, max_ack_pending="3")
        async with opened(open_source(url, group="g", consumer="c")) as source:
            first = await source.fetch(10, 1.0)
            assert len(first) == 3
            assert await source.fetch(10, 0.3) == []  # the group holds 3 unacknowledged
            await source.ack(first)
            assert len(await source.fetch(10, 1.0)) == 3

    run(main())


def test_group_names_are_sanitized_into_durable_names(harness: NatsHarness, subject: str) -> None:
    harness.produce(subject, [(None, b"x")])

    async def main() -> None:
        async with opened(open_source(harness.url(subject), group="scorers.v2 *", consumer="c")) as source:
            assert len(await drain(source, 1)) == 1

    run(main())
    info = harness.call(harness.js.consumer_info(subject.replace(".", "_").upper(), "scorers_v2__"))
    assert info.num_ack_pending == 0
    assert harness.unfinished(subject, "scorers.v2 *") == 0


def test_fetch_on_an_empty_subject_returns_nothing(harness: NatsHarness, subject: str) -> None:
    async def main() -> None:
        async with opened(open_source(harness.url(subject), group="g", consumer="c")) as source:
            assert await asyncio.wait_for(source.fetch(10, 0.5), HANG) == []
            assert await source.fetch(1, 0.2) == []
            assert await source.lag() == 0

    run(main())
    assert harness.read_all(subject) == []


def test_a_cancelled_fetch_loses_nothing(harness: NatsHarness, subject: str) -> None:
    async def main() -> None:
        async with opened(open_source(harness.url(subject), group="g", consumer="c")) as source:
            waiting = asyncio.create_task(source.fetch(10, 5.0))
            await asyncio.sleep(0.2)
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
            await asyncio.to_thread(harness.produce, subject, [("k", b"after")])
            got = await drain(source, 1)
            assert [(m.key, m.value) for m in got] == [("k", b"after")]

    run(main())


def test_a_named_stream_is_used_and_created(harness: NatsHarness, subject: str) -> None:
    name = "NAMED_" + subject.split(".")[1]

    async def main() -> None:
        async with opened(open_sink(harness.url(subject, stream=name))) as sink:
            await sink.send([Record(b"v", key="k")])
        async with opened(open_source(harness.url(subject, stream=name), group="g", consumer="c")) as source:
            assert [m.value for m in await drain(source, 1)] == [b"v"]
        with pytest.raises(BrokerError, match="captured by stream"):
            await opened(open_sink(harness.url(subject, stream="OTHER"))).__aenter__()

    run(main())
    assert harness.call(harness.js.find_stream_name_by_subject(subject)) == name


def test_a_group_reading_another_subject_of_the_stream_is_refused(harness: NatsHarness, subject: str) -> None:
    stream = "MULTI_" + subject.split(".")[1]
    harness.call(harness.js.add_stream(name=stream, subjects=[f"{subject}.>"]))

    async def main() -> None:
        async with opened(open_source(harness.url(f"{subject}.a"), group="g", consumer="c")):
            pass
        with pytest.raises(BrokerError, match="already reads subject"):
            await opened(open_source(harness.url(f"{subject}.b"), group="g", consumer="c")).__aenter__()

    run(main())


def test_unknown_and_bad_options_are_config_errors(harness: NatsHarness, subject: str) -> None:
    with pytest.raises(ConfigError, match="bogus"):
        open_source(harness.url(subject, bogus="1"), group="g", consumer="c")
    with pytest.raises(ConfigError, match="bogus"):
        open_sink(harness.url(subject, bogus="1"))
    with pytest.raises(ConfigError, match="ack_wait"):
        open_source(harness.url(subject, ack_wait="soon"), group="g", consumer="c")
    with pytest.raises(ConfigError, match="max_ack_pending"):
        open_source(harness.url(subject, max_ack_pending="0"), group="g", consumer="c")
    with pytest.raises(ConfigError, match="wildcard"):
        open_sink(harness.url("orders.*"))


def test_an_unreachable_server_is_a_broker_error(subject: str) -> None:
    url = f"nats://127.0.0.1:{free_port()}/{subject}"

    async def main() -> None:
        with pytest.raises(BrokerError, match="cannot connect to NATS at nats://127.0.0.1"):
            await asyncio.wait_for(open_source(url, group="g", consumer="c").start(), HANG)
        with pytest.raises(BrokerError, match="cannot connect"):
            await asyncio.wait_for(open_sink(url).start(), HANG)

    run(main())


def test_credentials_come_from_the_url_and_stay_out_of_errors(tmp_path: Path, subject: str) -> None:
    with nats_server(tmp_path, user="alice", password="s3cret") as base:
        port = base.rsplit(":", 1)[1]

        async def main() -> None:
            async with opened(open_sink(f"nats://alice:s3cret@127.0.0.1:{port}/{subject}")) as sink:
                await sink.send([Record(b"ok")])
            with pytest.raises(BrokerError) as failed:
                await asyncio.wait_for(open_sink(f"nats://alice:wrong-pw@127.0.0.1:{port}/{subject}").start(), HANG)
            assert "wrong-pw" not in str(failed.value)
            assert "Authorization Violation" in str(failed.value)

        run(main())
