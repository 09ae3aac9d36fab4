"""A real Redis server for the stream tests, driven with redis-py's plain (sync) client.

``start(folder)`` raises ``shipyard.testing.redis.RedisUnavailable`` (naming the
apt-get command) when redis-server is not installed; fixtures turn that into a skip.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast
from urllib.parse import quote, urlencode, urlsplit

import redis

from shipyard.testing.redis import redis_server

from .harness import KeyValue

# A killed consumer's entries are claimable after 2 s instead of 30.
DEFAULT_OPTIONS = {"ack_wait": "2"}


class RedisHarness:
    scheme = "redis"

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        """``redis://127.0.0.1:PORT`` (no stream)."""
        parts = urlsplit(base_url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 6379
        self.client = redis.Redis(host=self.host, port=self.port, socket_timeout=10)

    def url(self, topic: str, **options: str) -> str:
        query = urlencode({**DEFAULT_OPTIONS, **options})
        return f"{self.base_url}/{quote(topic, safe='')}" + (f"?{query}" if query else "")

    def create_topic(self, topic: str, partitions: int = 1) -> None:
        """No-op: a stream has no partitions and springs into being on the first XADD (or group creation)."""

    def produce(self, topic: str, messages: Sequence[KeyValue]) -> None:
        pipe = self.client.pipeline(transaction=False)
        for key, value in messages:
            fields: dict[Any, Any] = {"value": value}
            if key is not None:
                fields["key"] = key
            pipe.xadd(topic, fields)
        pipe.execute()

    def read_all(self, topic: str) -> list[KeyValue]:
        return [(_key(fields), fields.get(b"value", b"")) for _, fields in self.entries(topic)]

    def entries(self, topic: str) -> list[tuple[str, dict[bytes, bytes]]]:
        """Every entry of the stream as (entry id, raw fields)."""
        raw = cast("list[tuple[bytes, dict[bytes, bytes]]]", self.client.xrange(topic, "-", "+"))
        return [(i.decode(), fields) for i, fields in raw]

    def unfinished(self, topic: str, group: str) -> int:
        """Pending entries of the group plus entries after its last-delivered id, counted directly."""
        if not self.client.exists(topic):
            return 0
        groups = {g["name"].decode(): g for g in self.client.xinfo_groups(topic)}
        if group not in groups:
            return self.client.xlen(topic)
        info = groups[group]
        undelivered = cast(list[Any], self.client.xrange(topic, b"(" + info["last-delivered-id"], "+"))
        return int(info["pending"]) + len(undelivered)

    def close(self) -> None:
        self.client.close()


def _key(fields: dict[bytes, bytes]) -> str | None:
    raw = fields.get(b"key")
    return None if raw is None else raw.decode()


@contextmanager
def start(folder: Path) -> Iterator[RedisHarness]:
    """A Redis server on 127.0.0.1 (free port, working folder under ``folder``) for the block."""
    with redis_server(folder) as base_url:
        harness = RedisHarness(base_url)
        try:
            yield harness
        finally:
            harness.close()
