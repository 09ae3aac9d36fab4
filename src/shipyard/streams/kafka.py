"""Kafka topics (any Kafka-protocol broker) as a stream Source and Sink, through confluent-kafka.

URL::

    kafka://[USER:PASSWORD@]HOST:PORT[,HOST:PORT...]/TOPIC[?option=value&...]

Options:

* ``partitions`` -- partitions of the topic when the Source or Sink creates it
  (both create a missing topic with the admin API at ``start``; default 1).
  An existing topic is left as it is.
* any name containing a dot is a librdkafka setting, passed through as is, e.g.
  ``session.timeout.ms=3000``, ``security.protocol=SASL_SSL``,
  ``sasl.mechanism=SCRAM-SHA-256``, ``partition.assignment.strategy=cooperative-sticky``
  (see librdkafka's CONFIGURATION.md); so is ``debug`` (e.g. ``debug=cgrp``:
  client debug lines, logged at DEBUG). Settings that would break at-least-once
  or the group identity (``enable.auto.commit``, ``enable.auto.offset.store``,
  ``acks``, ``group.id``, ``bootstrap.servers``...) are refused.
* ``USER:PASSWORD@`` become ``sasl.username``/``sasl.password``; unless the URL
  says otherwise that also sets ``security.protocol=SASL_SSL`` and
  ``sasl.mechanism=PLAIN``.

Anything else is a ConfigError; so is ``ack_wait``: Kafka has no per-message
redelivery timer (see below).

Mapping: the record key is ``Message.key`` (UTF-8, undecodable bytes replaced),
record headers are ``Message.headers`` (values decoded the same way; of repeated
names the last wins), the record timestamp is ``Message.timestamp`` and
``Message.id`` is ``PARTITION-OFFSET`` (no topic: a Source reads one topic).
A Sink writes ``Record.key``/``headers`` the same way, with an idempotent
producer (``acks=all``); ``send`` returns once every record has its delivery
report.

Redelivery: the Source is a consumer-group member (``group.id`` = group,
``client.id`` = consumer) that commits offsets only in ``ack``, synchronously,
never automatically. Kafka keeps one committed offset per partition, so a
commit never passes a message this Source handed out and has not acknowledged.
Unacknowledged messages come again when their partition is assigned anew: after
a restart of the group member, when ``close`` leaves the group, or when the
broker drops a member that stopped heartbeating (``session.timeout.ms``, 45 s by
default). A rebalance can hand a member's partition to another while it still
holds messages of it; their acks are then skipped with a warning and the new
owner processes them again (at-least-once, the same ids).

Scale-out: run more consumers with the same group; partitions are shared among
them (extra members beyond the partition count stay idle), so create the topic
with ``partitions`` >= the consumers you want.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from types import ModuleType
from typing import Any, TypeVar

from shipyard._extras import require
from shipyard.errors import ConfigError
from shipyard.options import unknown as unknown_option
from shipyard.streams.broker import BrokerError, Message, Record, Sink, Source, StreamUrl

logger = logging.getLogger(__name__)
_client_logger = logging.getLogger(f"{__name__}.librdkafka")

T = TypeVar("T")

_REFUSED = {
    "bootstrap.servers": "write the brokers as the URL's host:port list",
    "metadata.broker.list": "write the brokers as the URL's host:port list",
    "group.id": "the group is given by the stream's --group",
    "client.id": "the client id is the stream's --consumer name",
    "enable.auto.commit": "offsets are committed after the outputs are sent (at-least-once)",
    "enable.auto.offset.store": "offsets are committed after the outputs are sent (at-least-once)",
    "acks": "the sink waits for all in-sync replicas",
    "request.required.acks": "the sink waits for all in-sync replicas",
}
_CONNECT_TIMEOUT = 5.0
"""Seconds to reach the cluster at start (metadata, topic creation) before BrokerError."""
_REQUEST_TIMEOUT = 10.0
_POLL_SLICE = 0.2
"""Longest single consume(), so an ack or lag query waits at most this long for the consumer thread."""
_JOIN_TIMEOUT = 15.0
"""How long start() waits for the first partition assignment before going on without it."""
_DEFAULT_MESSAGE_TIMEOUT_MS = 60_000
"""Delivery deadline of a record: well under max.poll.interval.ms (300 s), so a stuck send fails first."""
_RETRIABLE_COMMIT = ("REBALANCE_IN_PROGRESS", "ILLEGAL_GENERATION", "UNKNOWN_MEMBER_ID", "FENCED_INSTANCE_ID",
                     "STALE_MEMBER_EPOCH", "_ASSIGNMENT_LOST", "_STATE")


def source(url: StreamUrl, *, group: str, consumer: str) -> KafkaSource:
    """A (not yet started) consumer of ``url``'s topic in consumer group ``group``."""
    return KafkaSource(url, group=group, consumer=consumer)


def sink(url: StreamUrl) -> KafkaSink:
    """A (not yet started) producer to ``url``'s topic."""
    return KafkaSink(url)


def _kafka() -> ModuleType:
    return require("confluent_kafka", "kafka", "confluent-kafka")


class _ClientLog:
    """Routes librdkafka's log lines to logging (``shipyard.streams.kafka.librdkafka``) instead of stderr.

    Capped at WARNING: the client reconnects and retries by itself; what fails for
    good surfaces as a BrokerError.
    """

    def log(self, level: int, fmt: str, *args: object) -> None:
        text = fmt % args if args else fmt
        if "will be ignored by this" in text:
            return  # a consumer setting on a producer (dead letters share the source URL's options): harmless
        _client_logger.log(min(level, logging.WARNING), "%s", text)


def _options(url: StreamUrl) -> tuple[dict[str, Any], int]:
    """(librdkafka settings shared by every client of ``url``, partitions for a new topic); ConfigError if bad."""
    if not url.hosts:
        raise ConfigError(f"stream URL '{url}' names no broker; write it as kafka://HOST:PORT[,HOST:PORT]/TOPIC")
    if "ack_wait" in url.options:
        raise ConfigError(
            "kafka:// takes no ack_wait option: Kafka has no per-message redelivery timer; unacknowledged "
            "messages come back when their partition is reassigned (set session.timeout.ms to choose how soon "
            "a dead consumer is noticed)"
        )
    unknown = sorted(k for k in url.options if "." not in k and k not in ("partitions", "debug"))
    if unknown:
        near = unknown_option(unknown[0], ("partitions", "debug"), owner="kafka:// URLs")
        if near.suggestion is not None:
            raise near
        raise ConfigError(
            f"unknown option(s) {', '.join(unknown)} in kafka:// URL; known: partitions, debug, and librdkafka "
            "settings (names with a dot, e.g. session.timeout.ms=3000)"
        )
    refused = sorted(k for k in url.options if k in _REFUSED)
    if refused:
        raise ConfigError(f"kafka:// URL option {refused[0]} cannot be set: {_REFUSED[refused[0]]}")
    partitions = url.int_option("partitions", 1)
    if partitions < 1:
        raise ConfigError(f"kafka:// URL option partitions={partitions} must be at least 1")
    config: dict[str, Any] = {k: v for k, v in url.options.items() if k != "partitions"}
    config["bootstrap.servers"] = url.hosts
    if url.username is not None:
        config["sasl.username"] = url.username
        config["sasl.password"] = url.password or ""
        config.setdefault("security.protocol", "SASL_SSL")
        if "sasl.mechanism" not in config and "sasl.mechanisms" not in config:
            config["sasl.mechanism"] = "PLAIN"
    config["logger"] = _ClientLog()
    return config, partitions


def _describe(exc: BaseException) -> str:
    """A KafkaException's error name and text (``_TRANSPORT: Failed to get metadata ...``)."""
    err = exc.args[0] if exc.args else None
    if err is not None and hasattr(err, "name") and hasattr(err, "str"):
        return f"{err.name()}: {err.str()}"
    return str(exc)


def _error_name(exc: BaseException) -> str:
    err = exc.args[0] if exc.args else None
    return str(err.name()) if err is not None and hasattr(err, "name") else ""


def _new_client(kind: Callable[[dict[str, Any]], T], config: dict[str, Any], url: StreamUrl) -> T:
    """Construct a librdkafka client; a setting it rejects is a ConfigError."""
    ck = _kafka()
    try:
        return kind(config)
    except ck.KafkaException as exc:
        raise ConfigError(f"bad librdkafka setting in {url}: {_describe(exc)}") from None
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"bad librdkafka setting in {url}: {exc}") from None


def _admin(config: dict[str, Any], url: StreamUrl) -> Any:
    admin_module = require("confluent_kafka.admin", "kafka", "confluent-kafka")
    # a producer-type client asks the broker to auto-create topics it looks up; Tansu would (4 partitions)
    return _new_client(admin_module.AdminClient, {**config, "allow.auto.create.topics": False}, url)


def _ensure_topic(admin: Any, url: StreamUrl, partitions: int) -> None:
    """Create ``url``'s topic when missing (blocking). BrokerError when the cluster cannot be reached."""
    ck = _kafka()
    admin_module = require("confluent_kafka.admin", "kafka", "confluent-kafka")
    try:
        metadata = admin.list_topics(timeout=_CONNECT_TIMEOUT)
    except ck.KafkaException as exc:
        raise BrokerError(f"cannot reach the Kafka brokers of {url}: {_describe(exc)}") from None
    existing = metadata.topics.get(url.topic)
    if existing is not None:
        if existing.error is not None:
            raise BrokerError(f"topic of {url} is not usable: {existing.error.name()}: {existing.error.str()}")
        return
    # replication_factor -1: the cluster's default.replication.factor
    new = admin_module.NewTopic(url.topic, num_partitions=partitions, replication_factor=-1)
    future = admin.create_topics([new], request_timeout=_CONNECT_TIMEOUT)[url.topic]
    try:
        future.result(timeout=_REQUEST_TIMEOUT)
    except ck.KafkaException as exc:
        if _error_name(exc) == "TOPIC_ALREADY_EXISTS":
            return  # another member created it meanwhile
        raise BrokerError(f"cannot create the topic of {url}: {_describe(exc)}") from None
    logger.info("created topic %s with %d partition(s)", url, partitions)


def _text(raw: bytes | str | None) -> str | None:
    if raw is None:
        return None
    return raw if isinstance(raw, str) else raw.decode("utf-8", errors="replace")


def _to_message(raw: Any, ck: ModuleType) -> Message:
    partition, offset = raw.partition(), raw.offset()
    kind, millis = raw.timestamp()
    headers = {name: _text(value) or "" for name, value in (raw.headers() or [])}
    return Message(
        id=f"{partition}-{offset}",
        value=raw.value() or b"",
        key=_text(raw.key()),
        headers=headers,
        timestamp=None if kind == ck.TIMESTAMP_NOT_AVAILABLE else millis / 1000.0,
        token=(partition, offset),
    )


class KafkaSource(Source):
    """A consumer-group member on one topic.

    confluent-kafka consumers are not thread safe, so every call on the consumer
    runs on one thread this Source owns; the rebalance callbacks also run there
    (inside consume/close), so the bookkeeping below needs no lock.

    ``start`` returns once the group assigned this member its partitions (up to
    15 s). A rebalance completes only when every member polls: another member of
    the same group in the same process must keep fetching meanwhile.
    """

    def __init__(self, url: StreamUrl, *, group: str, consumer: str) -> None:
        self.url = url
        self.group = group
        self.consumer = consumer
        self._shared, self._partitions = _options(url)
        self._config = {
            **self._shared,
            "group.id": group,
            "client.id": consumer,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "enable.partition.eof": False,
            "error_cb": self._on_error,
        }
        self._config.setdefault("auto.offset.reset", "earliest")
        self._client: Any = None
        self._admin: Any = None
        """For lag(): its own connections, so its requests do not queue behind the consumer's long-poll fetch."""
        self._executor: ThreadPoolExecutor | None = None
        self._inflight: asyncio.Future[list[Message]] | None = None
        """A consume() whose fetch was cancelled: its messages go to the next fetch, not lost."""
        self._ready: deque[Message] = deque()
        # consumer-thread state
        self._assigned: set[int] = set()
        self._joined = False
        self._open: dict[int, set[int]] = {}
        """Offsets consumed and not yet acknowledged, per partition: a commit must stay below them."""
        self._committed: dict[int, int] = {}
        self._fatal: str | None = None

    @property
    def assignment(self) -> list[int]:
        """Partitions this member holds now (empty before the group assigned any)."""
        return sorted(self._assigned)

    async def start(self) -> None:
        if self._executor is not None:
            return
        self._admin = _admin(self._shared, self.url)
        await asyncio.to_thread(_ensure_topic, self._admin, self.url, self._partitions)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"kafka-{self.consumer}")
        try:
            await self._call(self._subscribe)
            # Join before returning so a started Source is a group member. The join needs the other
            # members to poll too; one that does not (busy elsewhere) only delays it to _JOIN_TIMEOUT.
            loop = asyncio.get_running_loop()
            deadline = loop.time() + _JOIN_TIMEOUT
            while not self._joined and loop.time() < deadline:
                self._ready.extend(await self._call(self._consume, 1000, 0.1))
        except BaseException:
            await self.close()
            raise
        if not self._joined:
            logger.info("%s: no partitions assigned to %s after %.0fs; going on, messages come once they are",
                        self.url, self.consumer, _JOIN_TIMEOUT)

    async def fetch(self, max_messages: int, timeout: float) -> list[Message]:
        self._require_started()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(timeout, 0.0)
        while True:
            if self._ready:
                return [self._ready.popleft() for _ in range(min(max_messages, len(self._ready)))]
            if self._inflight is None:
                wait = min(_POLL_SLICE, max(0.0, deadline - loop.time()))
                self._inflight = self._submit(self._consume, max_messages, wait)
            batch = await self._take_inflight()
            self._ready.extend(batch)
            if not self._ready and loop.time() >= deadline:
                return []

    async def ack(self, messages: Sequence[Message]) -> None:
        self._require_started()
        if messages:
            tokens: list[tuple[int, int]] = [m.token for m in messages]
            await self._call(self._commit, tokens)

    async def lag(self) -> int | None:
        """Messages of the topic (all partitions, so the whole group's) after the group's committed offsets."""
        self._require_started()
        consumed = await self._call(self._positions)
        return await asyncio.to_thread(self._group_lag, consumed)

    async def close(self) -> None:
        executor, self._executor = self._executor, None
        self._admin = None
        self._inflight = None
        self._ready.clear()
        if executor is None:
            return
        try:
            # after any consume still queued; leaves the group at once (LeaveGroup), so the
            # partitions move on without waiting for a session timeout
            await asyncio.get_running_loop().run_in_executor(executor, self._close_client)
        except Exception as exc:
            logger.warning("closing the Kafka consumer of %s failed: %s", self.url, _describe(exc))
        finally:
            executor.shutdown(wait=False)

    # -- on the event loop ----------------------------------------------------------------

    def _require_started(self) -> None:
        if self._executor is None:
            raise BrokerError(f"the Kafka source {self.url} is not started (or already closed)")

    def _submit(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        self._require_started()
        return asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        return await self._submit(fn, *args)

    async def _take_inflight(self) -> list[Message]:
        future = self._inflight
        assert future is not None
        try:
            batch = await asyncio.shield(future)
        except asyncio.CancelledError:
            raise  # keep the future: the next fetch returns what it consumed
        except BaseException:
            self._inflight = None
            raise
        self._inflight = None
        return batch

    # -- on the consumer thread ---------------------------------------------------------------

    def _subscribe(self) -> None:
        ck = _kafka()
        self._client = _new_client(ck.Consumer, self._config, self.url)
        self._client.subscribe([self.url.topic], on_assign=self._on_assign, on_revoke=self._on_revoke)

    def _close_client(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()

    def _on_assign(self, _consumer: Any, partitions: list[Any]) -> None:
        # eager protocol: the full new assignment; cooperative: the added partitions
        self._assigned.update(tp.partition for tp in partitions)
        self._joined = True
        logger.info("%s: %s assigned partition(s) %s", self.url, self.consumer,
                    sorted(tp.partition for tp in partitions))

    def _on_revoke(self, _consumer: Any, partitions: list[Any]) -> None:
        for tp in partitions:
            self._assigned.discard(tp.partition)
            # whoever gets the partition next starts at the committed offset: what we hold comes again
            self._open.pop(tp.partition, None)
            self._committed.pop(tp.partition, None)
        if partitions:
            logger.info("%s: %s gave up partition(s) %s in a rebalance", self.url, self.consumer,
                        sorted(tp.partition for tp in partitions))

    def _on_error(self, err: Any) -> None:
        if err.fatal():
            self._fatal = f"{err.name()}: {err.str()}"
        logger.warning("Kafka consumer %s on %s: %s: %s", self.consumer, self.url, err.name(), err.str())

    def _consume(self, max_messages: int, wait: float) -> list[Message]:
        ck = _kafka()
        try:
            # consume(n, t) waits until n messages or t seconds: take what is there, else wait for the
            # first message only, so a fetch returns as soon as anything arrives
            raw = self._client.consume(num_messages=max(1, max_messages), timeout=0)
            if not raw and wait > 0:
                raw = self._client.consume(num_messages=1, timeout=wait)
                if raw and max_messages > 1:
                    raw += self._client.consume(num_messages=max_messages - 1, timeout=0)
        except ck.KafkaException as exc:
            raise BrokerError(f"consuming from {self.url} failed: {_describe(exc)}") from None
        batch: list[Message] = []
        for item in raw:
            err = item.error()
            if err is not None:
                if err.fatal():
                    self._fatal = f"{err.name()}: {err.str()}"
                elif err.code() != ck.KafkaError._PARTITION_EOF:
                    logger.warning("%s: %s: %s", self.url, err.name(), err.str())
                continue
            message = _to_message(item, ck)
            self._open.setdefault(item.partition(), set()).add(item.offset())
            batch.append(message)
        if self._fatal is not None and not batch:
            raise BrokerError(f"the Kafka consumer of {self.url} failed for good: {self._fatal}")
        return batch

    def _commit(self, tokens: list[tuple[int, int]]) -> None:
        ck = _kafka()
        upto: dict[int, int] = {}
        for partition, offset in tokens:
            self._open.get(partition, set()).discard(offset)
            upto[partition] = max(upto.get(partition, 0), offset + 1)
        offsets, moved = [], []
        for partition, next_offset in sorted(upto.items()):
            if partition not in self._assigned:
                moved.append(partition)
                continue
            still_open = self._open.get(partition)
            if still_open:
                next_offset = min(next_offset, min(still_open))
            if next_offset <= self._committed.get(partition, -1):
                continue
            offsets.append(ck.TopicPartition(self.url.topic, partition, next_offset))
        if moved:
            logger.warning("%s: partition(s) %s moved to another consumer before their messages were "
                           "acknowledged; not committing them (they will be processed again)", self.url, moved)
        if not offsets:
            return
        try:
            results = self._client.commit(offsets=offsets, asynchronous=False)
        except ck.KafkaException as exc:
            if _error_name(exc) in _RETRIABLE_COMMIT:
                logger.warning("%s: commit refused during a rebalance (%s); those messages will be processed "
                               "again", self.url, _describe(exc))
                return
            raise BrokerError(f"committing offsets of {self.url} failed: {_describe(exc)}") from None
        for tp in results or []:
            if tp.error is None:
                self._committed[tp.partition] = tp.offset
            elif tp.error.name() in _RETRIABLE_COMMIT:
                logger.warning("%s: commit of partition %d refused (%s); its messages will be processed again",
                               self.url, tp.partition, tp.error.name())
            else:
                raise BrokerError(f"committing partition {tp.partition} of {self.url} failed: "
                                  f"{tp.error.name()}: {tp.error.str()}")

    def _positions(self) -> dict[int, int]:
        """Next offset to consume per assigned partition (local state, no request)."""
        ck = _kafka()
        parts = [ck.TopicPartition(self.url.topic, p) for p in sorted(self._assigned)]
        return {tp.partition: tp.offset for tp in self._client.position(parts) if tp.offset >= 0} if parts else {}

    # -- on a worker thread -------------------------------------------------------------------

    def _group_lag(self, consumed: dict[int, int]) -> int | None:
        ck = _kafka()
        admin_module = require("confluent_kafka.admin", "kafka", "confluent-kafka")
        topic = self.url.topic
        try:
            info = self._admin.list_topics(topic=topic, timeout=_REQUEST_TIMEOUT).topics.get(topic)
            if info is None or info.error is not None:
                return None
            parts = [ck.TopicPartition(topic, p) for p in sorted(info.partitions)]
            request = [ck.ConsumerGroupTopicPartitions(self.group, parts)]
            done = self._admin.list_consumer_group_offsets(request, request_timeout=_REQUEST_TIMEOUT)[self.group]
            committed = {tp.partition: tp.offset for tp in done.result(timeout=_REQUEST_TIMEOUT).topic_partitions}
            ends = self._offsets(parts, admin_module.OffsetSpec.latest())
            from_end = str(self._config.get("auto.offset.reset", "")).lower() in {"latest", "largest", "end"}
            uncommitted = any(committed.get(tp.partition, -1) < 0 for tp in parts)
            starts = self._offsets(parts, admin_module.OffsetSpec.earliest()) if uncommitted and not from_end else {}
        except ck.KafkaException as exc:
            raise BrokerError(f"reading the lag of {self.url} failed: {_describe(exc)}") from None
        total = 0
        for tp in parts:
            # not below what this member consumed: Tansu 0.6 reports the first offset of the last record
            # batch + 1 as the end of a partition (Kafka's end is never below a consumed offset)
            end = max(ends[tp.partition], consumed.get(tp.partition, 0))
            start = committed.get(tp.partition, -1)
            if start < 0:
                start = end if from_end else starts[tp.partition]
            total += max(0, end - start)
        return total

    def _offsets(self, parts: list[Any], spec: Any) -> dict[int, int]:
        futures = self._admin.list_offsets({tp: spec for tp in parts}, request_timeout=_REQUEST_TIMEOUT)
        return {tp.partition: future.result(timeout=_REQUEST_TIMEOUT).offset for tp, future in futures.items()}


class KafkaSink(Sink):
    """An idempotent producer (``acks=all``) to one topic."""

    def __init__(self, url: StreamUrl) -> None:
        self.url = url
        self._shared, self._partitions = _options(url)
        self._config = {**self._shared, "enable.idempotence": True, "acks": "all", "error_cb": self._on_error}
        self._config.setdefault("linger.ms", 5)
        if "message.timeout.ms" not in self._config and "delivery.timeout.ms" not in self._config:
            self._config["message.timeout.ms"] = _DEFAULT_MESSAGE_TIMEOUT_MS
        timeout_ms = self._config.get("message.timeout.ms") or self._config.get("delivery.timeout.ms")
        try:
            self._flush_timeout = float(timeout_ms or 0) / 1000.0 + 5.0
        except ValueError:
            raise ConfigError(f"kafka:// URL option message.timeout.ms={timeout_ms!r} must be a number") from None
        self._producer: Any = None
        self._fatal: str | None = None

    async def start(self) -> None:
        if self._producer is not None:
            return
        await asyncio.to_thread(_ensure_topic, _admin(self._shared, self.url), self.url, self._partitions)
        producer = _new_client(_kafka().Producer, self._config, self.url)
        # The topic's metadata now rather than on the first send, which would otherwise wait for it.
        ck = _kafka()
        try:
            await asyncio.to_thread(producer.list_topics, self.url.topic, _CONNECT_TIMEOUT)
        except ck.KafkaException as exc:
            raise BrokerError(f"cannot reach the Kafka brokers of {self.url}: {_describe(exc)}") from None
        self._producer = producer

    async def send(self, records: Sequence[Record]) -> None:
        producer = self._producer
        if producer is None:
            raise BrokerError(f"the Kafka sink {self.url} is not started (or already closed)")
        if records:
            # the producer is thread safe; waiting for delivery reports happens off the event loop
            await asyncio.to_thread(self._send, producer, list(records))

    async def close(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            left = await asyncio.to_thread(producer.flush, self._flush_timeout)
            if left:
                logger.warning("%d record(s) for %s were still unconfirmed at close", left, self.url)

    def _on_error(self, err: Any) -> None:
        if err.fatal():
            self._fatal = f"{err.name()}: {err.str()}"
        logger.warning("Kafka producer on %s: %s: %s", self.url, err.name(), err.str())

    def _send(self, producer: Any, records: list[Record]) -> None:
        ck = _kafka()
        failures: list[str] = []

        def delivered(err: Any, _msg: Any) -> None:
            if err is not None:
                failures.append(f"{err.name()}: {err.str()}")

        for record in records:
            while True:
                try:
                    producer.produce(
                        self.url.topic,
                        value=record.value,
                        key=None if record.key is None else record.key.encode(),
                        headers=[(k, v.encode()) for k, v in record.headers.items()] or None,
                        on_delivery=delivered,
                    )
                    break
                except BufferError:
                    producer.poll(0.1)  # the local queue is full: serve delivery reports to make room
                except ck.KafkaException as exc:
                    raise BrokerError(f"producing to {self.url} failed: {_describe(exc)}") from None
        left = producer.flush(self._flush_timeout)
        if failures:
            raise BrokerError(f"{len(failures)} of {len(records)} record(s) to {self.url} were not delivered: "
                              f"{failures[0]}")
        if left:
            raise BrokerError(f"{left} record(s) to {self.url} were not confirmed within {self._flush_timeout:.0f}s")
        if self._fatal is not None:
            raise BrokerError(f"the Kafka producer of {self.url} failed for good: {self._fatal}")
