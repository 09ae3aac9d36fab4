"""Redis Streams adapter (``redis://``, ``rediss://`` for TLS), on redis-py's asyncio client.

URL::

    redis[s]://[[USER]:PASSWORD@]HOST[:PORT]/STREAM[?OPTION=VALUE&...]

``STREAM`` is the stream key (URL-decoded, so ``a%2Fb`` is the key ``a/b``); the
database number is the ``db`` option, not the path. PORT defaults to 6379.
``rediss://`` verifies the server's certificate against the system CAs.

Options:

* ``db`` (int, default 0): the database number.
* ``ack_wait`` (seconds, default 30): how long a delivered, unacknowledged entry
  may stay idle before another consumer of the group claims it (XAUTOCLAIM
  min-idle-time). Make it longer than the slowest batch takes to score and send.
  A sink ignores it (sink URLs are often derived from the source URL).
* ``maxlen`` (int, sink only, default none): trim the stream to about this many
  entries on every write (``XADD ... MAXLEN ~ N``; Redis trims whole macro
  nodes, so the stream can hold somewhat more). Without it the stream grows.

Any other option is a ConfigError.

Entry layout: field ``value`` holds the payload bytes, optional field ``key`` the
message key, and every other field is a header (``Message.headers``, decoded as
UTF-8). A sink writes records the same way, so a header may not be called
``value`` or ``key``. An entry written by someone else without a ``value`` field
is read with ``Message.value`` = a JSON object of all its fields: the consumer
then dead-letters it as invalid input and the dead letter still shows what was
there. ``Message.id`` is the entry id (``MS-SEQ``, the same on every
redelivery) and ``Message.timestamp`` its millisecond part.

Delivery and redelivery: a source is one consumer (``consumer``) of a consumer
group (``group``, created at the start of the stream with ``XGROUP CREATE ...
0 MKSTREAM`` if missing, so a new group reads the stream from its first
entry). ``fetch`` looks, in order, at

1. this consumer's own pending entries (``XREADGROUP ... 0``): after a restart
   with the same consumer name, what it had fetched but not acknowledged comes
   back at once;
2. entries other consumers fetched but did not acknowledge within ``ack_wait``
   (``XAUTOCLAIM``; at start, then at most every ``ack_wait/2`` seconds), e.g.
   because the process died; they keep their entry id;
3. new entries (``XREADGROUP ... >``, blocking up to the fetch timeout).

An entry stays in the group's pending list until ``ack`` (``XACK``). A fetch
cancelled (or failed) while its XREADGROUP/XAUTOCLAIM was on the wire drops the connection
(redis-py closes it, the pool opens a new one); entries Redis handed out in
that call are still pending for this consumer, so the next fetch re-reads this
consumer's pending list (skipping what it already handed out), and whatever
slips past that comes back through XAUTOCLAIM after ``ack_wait``. XAUTOCLAIM
also takes back this consumer's own entries idle past ``ack_wait``; those
still held unacknowledged are not handed out twice. Entries trimmed away
(``maxlen``, XTRIM, XDEL) before their ack are dropped from the pending list
with a warning: there is nothing left to deliver.

Scale-out: run more consumers with the same group and distinct consumer names
(a restarted consumer should reuse its name); Redis gives each new entry to one
of them. A consumer that closes with nothing pending is removed from the group
(``XGROUP DELCONSUMER``); one with pending entries stays so they can be re-read
or claimed.

Writes: ``Sink.send`` sends one pipeline of XADDs (no MULTI) and returns after
Redis replied to all of them. Redis acknowledges from memory: durability on
disk is the server's AOF/replication setting, not the client's. A connection
lost mid-send can be retried by redis-py once, so a record may be written
twice (at-least-once; readers drop duplicates by the source message id).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

from shipyard._extras import require
from shipyard.errors import ConfigError
from shipyard.streams.broker import BrokerError, Message, Record, Sink, Source, StreamUrl

logger = logging.getLogger(__name__)

DEFAULT_PORT = 6379
DEFAULT_ACK_WAIT = 30.0
_CONNECT_TIMEOUT = 5.0
# One blocking XREADGROUP never waits longer than _MAX_BLOCK, so a reply always
# comes well inside the socket read timeout (redis-py would treat a longer wait
# as a dead connection); longer fetch timeouts loop.
_MAX_BLOCK = 10.0
_SOCKET_TIMEOUT = 30.0
_COUNT_PAGE = 1000
_FIELDS = (b"value", b"key")

# Drop the consumer only if it holds no pending entry, atomically: a consumer
# deleted with pending entries would lose them (they leave the pending list).
_LEAVE_SCRIPT = """
if #redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2]) == 0 then
  return redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
end
return -1
"""


def source(url: StreamUrl, *, group: str, consumer: str) -> RedisSource:
    """A (not yet started) consumer ``consumer`` of group ``group`` on the stream of ``url``."""
    return RedisSource(url, group=group, consumer=consumer)


def sink(url: StreamUrl) -> RedisSink:
    """A (not yet started) writer to the stream of ``url``."""
    return RedisSink(url)


class RedisSource(Source):
    """One consumer of a Redis Streams consumer group (see the module docstring for the delivery rules)."""

    def __init__(self, url: StreamUrl, *, group: str, consumer: str) -> None:
        if "maxlen" in url.options:
            raise ConfigError(f"stream URL option maxlen is for sinks only; remove it from the source {url}")
        url.refuse_unknown({"db", "ack_wait"})
        self.url = url
        self.group = group
        self.consumer = consumer
        self._ack_wait = url.float_option("ack_wait", DEFAULT_ACK_WAIT)
        if self._ack_wait <= 0:
            raise ConfigError(f"stream URL option ack_wait must be > 0 seconds, not {self._ack_wait:g}")
        self._settings = _settings(url)
        self._key = url.topic.encode()
        self._client: Any = None
        self._own_cursor: bytes | None = b"0"
        """Where re-reading this consumer's pending entries continues; None once they are all handed out."""
        self._claim_cursor = b"0-0"
        self._next_claim = 0.0
        self._held: set[bytes] = set()
        """Entry ids handed out by fetch and not yet acknowledged."""

    async def start(self) -> None:
        self._client = _client(self._settings)
        try:
            with _errors("XGROUP CREATE", self.url):
                try:
                    await self._client.xgroup_create(self._key, self.group, id="0", mkstream=True)
                except _redis_exceptions().ResponseError as exc:
                    if "BUSYGROUP" not in str(exc):  # the group exists already: join it
                        raise
        except BaseException:
            await self._disconnect()
            raise

    async def fetch(self, max_messages: int, timeout: float) -> list[Message]:
        client = self._started()
        count = max(1, max_messages)
        deadline = time.monotonic() + max(0.0, timeout)
        try:
            while True:
                if self._own_cursor is not None:
                    with _errors("XREADGROUP (own pending entries)", self.url):
                        messages = await self._read_own(client, count)
                    if messages:
                        return messages
                if time.monotonic() >= self._next_claim:
                    with _errors("XAUTOCLAIM", self.url):
                        messages = await self._claim(client, count)
                    if messages:
                        return messages
                wait = min(deadline - time.monotonic(), _MAX_BLOCK)
                with _errors("XREADGROUP", self.url):
                    reply = await client.xreadgroup(
                        self.group, self.consumer, {self._key: b">"}, count=count,
                        block=max(1, int(wait * 1000)) if wait > 0 else None,
                    )
                messages = await self._messages(client, _entries(reply))
                if messages or time.monotonic() >= deadline:
                    return messages
        except BaseException:  # cancelled, or the connection failed: a reply may have been lost
            # What the lost call took is pending for us: look at our pending list next time.
            self._own_cursor = b"0"
            raise

    async def _read_own(self, client: Any, count: int) -> list[Message]:
        """The next of this consumer's pending entries that it does not hold already."""
        while self._own_cursor is not None:
            reply = await client.xreadgroup(self.group, self.consumer, {self._key: self._own_cursor}, count=count)
            entries = _entries(reply)
            if not entries:
                self._own_cursor = None
                return []
            self._own_cursor = entries[-1][0]
            messages = await self._messages(client, entries)
            if messages:
                return messages
        return []

    async def _claim(self, client: Any, count: int) -> list[Message]:
        """Entries idle longer than ack_wait in any consumer's pending list, now this consumer's."""
        reply = await client.xautoclaim(
            self._key, self.group, self.consumer, min_idle_time=int(self._ack_wait * 1000),
            start_id=self._claim_cursor, count=count,
        )
        cursor, entries = reply[0], reply[1]
        deleted = reply[2] if len(reply) > 2 else []  # Redis >= 7 reports (and un-pends) trimmed entries
        if deleted:
            logger.warning("%d entries of %s were trimmed before they were acknowledged; dropped: %s",
                           len(deleted), self.url, _ids(deleted))
        self._claim_cursor = cursor
        if cursor == b"0-0":  # a full pass over the pending list: rest until the next one is due
            self._next_claim = time.monotonic() + self._ack_wait / 2
        return await self._messages(client, [e for e in entries if e[0] is not None])

    async def _messages(self, client: Any, entries: list[tuple[bytes, dict[bytes, bytes] | None]]) -> list[Message]:
        """Messages for entries not held already; trimmed entries (no fields) are acknowledged away."""
        messages: list[Message] = []
        gone: list[bytes] = []
        for entry_id, fields in entries:
            if not fields:
                gone.append(entry_id)
            elif entry_id not in self._held:
                messages.append(_message(entry_id, fields))
        self._held.update(m.token for m in messages)
        if gone:
            logger.warning("%d entries of %s were trimmed before they were acknowledged; dropped: %s",
                           len(gone), self.url, _ids(gone))
            with _errors("XACK", self.url):
                await client.xack(self._key, self.group, *gone)
        return messages

    async def ack(self, messages: Sequence[Message]) -> None:
        if not messages:
            return
        client = self._started()
        ids = [m.id.encode() for m in messages]
        with _errors("XACK", self.url):
            await client.xack(self._key, self.group, *ids)  # one command, one round trip
        self._held.difference_update(ids)

    async def lag(self) -> int | None:
        """Not yet delivered (XINFO GROUPS ``lag``) plus delivered and not acknowledged (``pending``)."""
        client = self._started()
        with _errors("XINFO GROUPS", self.url):
            pipe = client.pipeline(transaction=False)
            pipe.xinfo_groups(self._key)
            pipe.xlen(self._key)
            groups, length = await pipe.execute()
            info = next((g for g in groups if g.get("name") in (self.group, self.group.encode())), None)
            if info is None:
                return None
            undelivered = info.get("lag")
            if undelivered is None:  # Redis < 7, or after an XDEL Redis cannot compute it: count
                undelivered = await self._count_after(client, info["last-delivered-id"])
            # Redis counts entries trimmed before delivery in lag; they can never be delivered.
            return int(info["pending"]) + min(int(undelivered), int(length))

    async def _count_after(self, client: Any, last_id: bytes) -> int:
        total, start = 0, b"(" + last_id
        while True:
            page = await client.xrange(self._key, min=start, max=b"+", count=_COUNT_PAGE)
            total += len(page)
            if len(page) < _COUNT_PAGE:
                return total
            start = b"(" + page[-1][0]

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        try:
            await client.eval(_LEAVE_SCRIPT, 1, self._key, self.group, self.consumer)
        except (_redis_exceptions().RedisError, OSError) as exc:  # tidiness only: the group works without it
            logger.debug("could not remove consumer %s from group %s of %s: %s", self.consumer, self.group,
                         self.url, exc)
        finally:
            self._held.clear()
            self._own_cursor = b"0"
            await client.aclose()

    async def _disconnect(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    def _started(self) -> Any:
        if self._client is None:
            raise BrokerError(f"the Redis source {self.url} is not started (call start() first)")
        return self._client


class RedisSink(Sink):
    """Writes records as stream entries (XADD), one pipeline per send."""

    def __init__(self, url: StreamUrl) -> None:
        url.refuse_unknown({"db", "ack_wait", "maxlen"})
        self.url = url
        self._key = url.topic.encode()
        self._maxlen: int | None = None
        if "maxlen" in url.options:
            self._maxlen = url.int_option("maxlen", 0)
            if self._maxlen <= 0:
                raise ConfigError(f"stream URL option maxlen must be a positive whole number, not {self._maxlen}")
        url.float_option("ack_wait", DEFAULT_ACK_WAIT)  # accepted (ignored) but still a number
        self._settings = _settings(url)
        self._client: Any = None

    async def start(self) -> None:
        # XADD creates the stream; a PING here makes a wrong address fail at start, not at the first send.
        self._client = _client(self._settings)
        try:
            with _errors("PING", self.url):
                await self._client.ping()
        except BaseException:
            client, self._client = self._client, None
            await client.aclose()
            raise

    async def send(self, records: Sequence[Record]) -> None:
        if not records:
            return
        if self._client is None:
            raise BrokerError(f"the Redis sink {self.url} is not started (call start() first)")
        entries = [_fields(r, self.url) for r in records]
        with _errors("XADD", self.url):
            pipe = self._client.pipeline(transaction=False)
            for fields in entries:
                pipe.xadd(self._key, fields, maxlen=self._maxlen, approximate=True)
            await pipe.execute()

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()


def _settings(url: StreamUrl) -> dict[str, Any]:
    """Connection settings from ``url``, checked now so a bad URL fails before any connection."""
    host, port = _address(url)
    db = url.int_option("db", 0)
    if db < 0:
        raise ConfigError(f"stream URL option db must be >= 0, not {db}")
    return {"host": host, "port": port, "db": db, "username": url.username, "password": url.password,
            "ssl": url.scheme == "rediss"}


def _client(settings: dict[str, Any]) -> Any:
    """A redis-py asyncio client, with its own connection pool (concurrent fetch and ack use two connections)."""
    aioredis = require("redis.asyncio", "redis", "redis")
    retry = require("redis.asyncio.retry", "redis", "redis")
    backoff = require("redis.backoff", "redis", "redis")
    return aioredis.Redis(
        **settings,
        socket_connect_timeout=_CONNECT_TIMEOUT, socket_timeout=_SOCKET_TIMEOUT,
        # One quick retry rides out a dropped idle connection; more would only delay a clear error.
        retry=retry.Retry(backoff.ExponentialBackoff(cap=0.5, base=0.1), 1),
        decode_responses=False,
    )


def _address(url: StreamUrl) -> tuple[str, int]:
    if "," in url.hosts:
        raise ConfigError(f"a redis:// URL names one server, not several: {url}")
    parts = urlsplit(f"//{url.hosts}")
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError:
        raise ConfigError(f"bad port in stream URL {url}") from None
    return parts.hostname or "localhost", port


def _redis_exceptions() -> Any:
    return require("redis.exceptions", "redis", "redis")


@contextmanager
def _errors(action: str, url: StreamUrl) -> Iterator[None]:
    """Turn redis-py's errors into BrokerError naming the command and the (password-free) URL."""
    try:
        yield
    except (_redis_exceptions().RedisError, OSError) as exc:
        raise BrokerError(f"Redis {action} on {url} failed: {exc}") from exc


def _entries(reply: Any) -> list[tuple[bytes, dict[bytes, bytes] | None]]:
    """The entries of a one-stream XREADGROUP reply (``[[key, [(id, fields), ...]]]`` or None)."""
    if not reply:
        return []
    return list(reply[0][1])


def _message(entry_id: bytes, fields: dict[bytes, bytes]) -> Message:
    value = fields.get(b"value")
    key = fields.get(b"key")
    headers = {_text(k): _text(v) for k, v in fields.items() if k not in _FIELDS}
    if value is None:  # not written by a shipyard sink: keep everything for the dead letter
        value = json.dumps({_text(k): _text(v) for k, v in fields.items()}).encode()
    return Message(
        id=entry_id.decode(),
        value=value,
        key=None if key is None else _text(key),
        headers=headers,
        timestamp=int(entry_id.split(b"-", 1)[0]) / 1000,
        token=entry_id,
    )


def _fields(record: Record, url: StreamUrl) -> dict[bytes, bytes]:
    fields = {b"value": record.value}
    if record.key is not None:
        fields[b"key"] = record.key.encode()
    for name, text in record.headers.items():
        field = name.encode()
        if field in _FIELDS:
            raise BrokerError(f"a record header may not be called '{name}' on {url}: Redis entries use that field")
        fields[field] = text.encode()
    return fields


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace")


def _ids(ids: Sequence[bytes]) -> str:
    shown = ", ".join(i.decode() for i in ids[:5])
    return shown + (f" and {len(ids) - 5} more" if len(ids) > 5 else "")
