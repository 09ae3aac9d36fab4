"""What the stream consumer needs from a broker: a Source to read and acknowledge, a Sink to write.

One small interface over four brokers (``local://`` embedded SQLite, ``redis://``
Redis Streams, ``nats://`` NATS JetStream, ``kafka://`` any Kafka-protocol
broker), so the consumer loop, the dead-letter rules and the tests are written
once. Adapters live one per module and import their client library lazily.

Delivery contract (what makes the consumer at-least-once):

* ``Source.fetch`` hands out messages that stay *unacknowledged* until
  ``Source.ack``; if the process dies before the ack, the broker delivers them
  again (to this consumer after a restart, or to another member of the group).
* ``Source.ack`` is called in fetch order, only after ``Sink.send`` returned for
  every output of those messages.
* ``Sink.send`` returns only once the broker has durably accepted every record
  (Kafka delivery report, JetStream PubAck, XADD reply, SQLite commit); it raises
  ``BrokerError`` otherwise, and nothing is acknowledged.
* ``Message.id`` is stable across redeliveries (partition/offset, entry id, stream
  sequence), so a reader of the sink can drop duplicates by it.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from shipyard.errors import BrokerError, ConfigError
from shipyard.options import check_names

__all__ = ["SCHEMES", "BrokerError", "Message", "Record", "Sink", "Source", "StreamUrl", "open_sink", "open_source"]


@dataclass(frozen=True)
class StreamUrl:
    """A parsed ``scheme://[user:password@]host[:port][,host:port...]/TOPIC?option=value`` address.

    ``topic`` is the Kafka topic, the Redis stream key, the NATS subject or the
    embedded stream's name. ``options`` are the query parameters, left to each
    adapter to interpret (and to refuse when unknown).
    """

    scheme: str
    hosts: str
    """``host:port`` (comma separated for several Kafka bootstrap servers); may be empty."""
    topic: str
    options: dict[str, str] = field(default_factory=dict)
    username: str | None = None
    password: str | None = None
    raw: str = ""

    @classmethod
    def parse(cls, url: str) -> StreamUrl:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in SCHEMES:
            raise ConfigError(
                f"unsupported stream URL '{_redact(url)}': the scheme must be one of "
                + ", ".join(f"{s}://" for s in sorted(SCHEMES))
            )
        netloc = parts.netloc
        username = password = None
        if "@" in netloc:
            creds, netloc = netloc.rsplit("@", 1)
            username, _, pw = creds.partition(":")
            username, password = unquote(username) or None, unquote(pw) or None
        topic = unquote(parts.path.lstrip("/"))
        if scheme == "local" and not topic:  # local://NAME: the name reads as the host
            topic, netloc = netloc, ""
        if not topic:
            raise ConfigError(
                f"stream URL '{_redact(url)}' names no topic/stream/subject; write it as "
                f"{scheme}://HOST:PORT/NAME" if scheme != "local" else "local://NAME"
            )
        options = dict(parse_qsl(parts.query, keep_blank_values=True))
        return cls(scheme, netloc, topic, options, username, password, url)

    def with_topic(self, topic: str) -> StreamUrl:
        """The same broker and options, another topic (dead letters, results)."""
        return StreamUrl(self.scheme, self.hosts, topic, dict(self.options), self.username, self.password,
                         self.raw)

    def option(self, name: str, default: str) -> str:
        return self.options.get(name, default)

    def float_option(self, name: str, default: float) -> float:
        value = self.options.get(name)
        if value is None:
            return default
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"stream URL option {name}={value!r} must be a number") from None

    def int_option(self, name: str, default: int) -> int:
        value = self.float_option(name, default)
        if value != int(value):
            raise ConfigError(f"stream URL option {name}={value!r} must be a whole number")
        return int(value)

    def refuse_unknown(self, known: set[str]) -> None:
        """UnknownOption (a ConfigError) naming the nearest known option, for any other query key."""
        check_names(sorted(self.options), known, owner=f"{self.scheme}:// URLs")

    def __str__(self) -> str:
        """The address without credentials (safe for logs and outputs)."""
        host = f"{self.hosts}/" if self.hosts else ""
        return f"{self.scheme}://{host}{self.topic}"


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        return url.replace(f":{parts.password}@", ":***@")
    return url


@dataclass
class Message:
    """One message read from a Source."""

    id: str
    """Stable across redeliveries: ``PARTITION-OFFSET`` (Kafka), entry id (Redis), stream sequence (NATS)."""
    value: bytes
    key: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    timestamp: float | None = None
    """When the broker stored it (seconds since the epoch), when the broker says."""
    token: Any = None
    """Whatever the adapter needs to acknowledge it (not for callers)."""


@dataclass
class Record:
    """One message to write to a Sink."""

    value: bytes
    key: str | None = None
    headers: dict[str, str] = field(default_factory=dict)


class Source(ABC):
    """A consumer-group member reading one topic. Used from one asyncio task at a time per method."""

    url: StreamUrl

    @abstractmethod
    async def start(self) -> None:
        """Connect; create the stream/topic and the group when they do not exist yet."""

    @abstractmethod
    async def fetch(self, max_messages: int, timeout: float) -> list[Message]:
        """Wait up to ``timeout`` seconds for messages; return at most ``max_messages`` (maybe none)."""

    @abstractmethod
    async def ack(self, messages: Sequence[Message]) -> None:
        """Mark messages done for the group (commit); called in fetch order, after their outputs were sent."""

    async def lag(self) -> int | None:
        """Messages in the topic the group has not finished yet (None when the broker cannot say)."""
        return None

    @abstractmethod
    async def close(self) -> None:
        """Leave the group and disconnect; unacknowledged messages will be delivered again."""


class Sink(ABC):
    """A producer to one topic."""

    url: StreamUrl

    @abstractmethod
    async def start(self) -> None:
        """Connect; create the stream/topic when it does not exist yet."""

    @abstractmethod
    async def send(self, records: Sequence[Record]) -> None:
        """Write records in order; return once the broker durably holds all of them, else raise BrokerError."""

    @abstractmethod
    async def close(self) -> None:
        """Flush and disconnect."""


# scheme -> module defining ``source(url, group, consumer)`` and ``sink(url)``
SCHEMES = {
    "local": "shipyard.streams.local",
    "redis": "shipyard.streams.redis",
    "rediss": "shipyard.streams.redis",
    "nats": "shipyard.streams.nats",
    "tls": "shipyard.streams.nats",
    "kafka": "shipyard.streams.kafka",
}


def open_source(url: str | StreamUrl, *, group: str, consumer: str) -> Source:
    """A (not yet started) Source for ``url``, reading as ``consumer`` in consumer group ``group``."""
    parsed = url if isinstance(url, StreamUrl) else StreamUrl.parse(url)
    module = importlib.import_module(SCHEMES[parsed.scheme])
    source: Source = module.source(parsed, group=group, consumer=consumer)
    return source


def open_sink(url: str | StreamUrl) -> Sink:
    """A (not yet started) Sink for ``url``."""
    parsed = url if isinstance(url, StreamUrl) else StreamUrl.parse(url)
    module = importlib.import_module(SCHEMES[parsed.scheme])
    sink: Sink = module.sink(parsed)
    return sink
