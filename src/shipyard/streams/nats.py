"""NATS JetStream: a durable pull consumer as the Source, JetStream publishes as the Sink.

URL::

    nats://[user:password@]host:port[,host:port...]/SUBJECT[?option=value&...]
    tls://...                       the same over TLS, verified against the system's CAs
                                    (point SSL_CERT_FILE at a private CA's bundle to trust it)

The path is the subject (URL-decoded, e.g. ``orders.in``; a Source may use
wildcards, ``orders.*``). No host means ``127.0.0.1:4222``. ``user:password``
log in with a user name and password; a user name alone is sent as a token.

Options:

``stream``
    The JetStream stream holding the subject. Default: the stream that already
    captures the subject; when none does, one is created, named after the subject
    (characters other than ``A-Za-z0-9_-`` become ``_``, upper-cased:
    ``orders.in`` -> ``ORDERS_IN``), capturing exactly that subject, file storage.
    A named stream that does not exist is created the same way.
``ack_wait``
    Seconds (default 30) the group's durable consumer waits for an ack before it
    delivers the message again (to any member of the group). Keep it above the
    time a fetched batch takes to score and send.
``max_ack_pending``
    Most messages the group may have delivered but not acknowledged (default: the
    server's, 1000 on nats-server 2.x); bounds the in-flight messages of the whole group.

Anything else raises ConfigError.

Messages: ``Message.id`` is the stream sequence, which stays the same when a
message is delivered again. ``key`` is the ``Shipyard-Key`` header, else the
``Nats-Msg-Id`` header, else None; ``headers`` are all the message's headers;
``timestamp`` is when the stream stored it. The Sink writes ``Record.key`` to the
``Shipyard-Key`` header, never to ``Nats-Msg-Id``: JetStream would drop distinct
messages sharing a key as duplicates.

Redelivery: the group is a durable pull consumer (explicit ack, deliver all,
``filter_subject`` = the subject) named after the group. A message not
acknowledged within ``ack_wait`` goes out again, to whichever member fetches
next; the messages a Source fetched but did not acknowledge are nak'd on
``close()`` so the group gets them back at once.

Scaling out: every process of a group binds to the same durable consumer and
the server shares its messages between their fetches (no partitions, no
rebalancing; add or remove members at any time). Durable names cannot hold
``.``, ``*``, ``>``, spaces or path separators, so the group name is sanitized
like stream names (``scorers.v2`` -> ``scorers_v2``); two groups differing only
in such characters share a consumer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import ssl
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from shipyard._extras import require
from shipyard.errors import ConfigError
from shipyard.streams.broker import BrokerError, Message, Record, Sink, Source, StreamUrl

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg
    from nats.js.client import JetStreamContext

logger = logging.getLogger(__name__)

__all__ = ["KEY_HEADER", "NatsSink", "NatsSource", "durable_name", "sink", "source", "stream_name"]

KEY_HEADER = "Shipyard-Key"
_MSG_ID_HEADER = "Nats-Msg-Id"
_OPTIONS = {"stream", "ack_wait", "max_ack_pending"}
_DEFAULT_HOST = "127.0.0.1:4222"
_CONNECT_TIMEOUT = 2  # seconds per attempt; nats-py takes an int
# The first connect tries each server twice, 1 s apart, so a dead address fails in seconds...
_FIRST_CONNECT_ATTEMPTS = 1
_FIRST_CONNECT_WAIT = 1
_CONNECT_DEADLINE = 8.0
# ...while an established connection rides out a broker restart of about a minute.
_RECONNECT_ATTEMPTS = 30
_RECONNECT_WAIT = 2.0
_API_TIMEOUT = 5.0  # JetStream API requests, PubAcks and the ack barrier
_MAX_PENDING_PUBLISHES = 4000  # unanswered publishes of a sink at once (nats-py's default too)
_MIN_FETCH_TIMEOUT = 0.01  # nats-py refuses 0 and sends expires = timeout - 100 µs
_FIRST_FETCH_WAIT = 0.05
_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9_-]")


def stream_name(subject: str) -> str:
    """The stream created for ``subject`` when none captures it: ``orders.in`` -> ``ORDERS_IN``."""
    return _UNSAFE_NAME.sub("_", subject).upper()


def durable_name(group: str) -> str:
    """The durable consumer name of ``group``: characters other than ``A-Za-z0-9_-`` become ``_``."""
    return _UNSAFE_NAME.sub("_", group)


def source(url: StreamUrl, *, group: str, consumer: str) -> NatsSource:
    """A (not yet started) member ``consumer`` of consumer group ``group`` reading ``url``'s subject."""
    return NatsSource(url, group=group, consumer=consumer)


def sink(url: StreamUrl) -> NatsSink:
    """A (not yet started) publisher to ``url``'s subject."""
    return NatsSink(url)


class NatsSource(Source):
    """A member of a JetStream durable pull consumer.

    Args:
        url: the subject and options (see the module docstring).
        group: the consumer group, i.e. the durable consumer's name (sanitized).
        consumer: this member's name, used as the NATS connection name.
    """

    def __init__(self, url: StreamUrl, *, group: str, consumer: str) -> None:
        url.refuse_unknown(_OPTIONS)
        if not group.strip():
            raise ConfigError(f"a consumer group name is needed to read {url}")
        self.url = url
        self.group = group
        self.consumer = consumer
        self.durable = durable_name(group)
        if self.durable != group:
            logger.info("NATS durable names cannot hold '.', '*', '>', spaces or '/': group %r reads as "
                        "durable consumer %r", group, self.durable)
        self.ack_wait = _positive(url, "ack_wait", 30.0)
        self.max_ack_pending = _optional_count(url, "max_ack_pending")
        self.stream: str | None = url.options.get("stream") or None
        self._nc: Client | None = None
        self._psub: JetStreamContext.PullSubscription | None = None
        # Fetched, not yet acknowledged: nak'd on close so the group gets them back without waiting ack_wait.
        self._unacked: dict[int, Msg] = {}

    async def start(self) -> None:
        nats_api = require("nats.js.api", "nats", "nats-py")
        self._nc = await _connect(self.url, name=f"shipyard {self.group}/{self.consumer}")
        try:
            js = self._nc.jetstream(timeout=_API_TIMEOUT)
            self.stream = await _ensure_stream(js, self.url, self.stream)
            config = nats_api.ConsumerConfig(
                name=self.durable,
                durable_name=self.durable,
                ack_policy=nats_api.AckPolicy.EXPLICIT,
                deliver_policy=nats_api.DeliverPolicy.ALL,
                ack_wait=self.ack_wait,
                max_ack_pending=self.max_ack_pending,
                filter_subject=self.url.topic,
            )
            await self._ensure_consumer(js, self.stream, config)
            self._psub = await js.pull_subscribe_bind(self.durable, self.stream)
        except BaseException:
            await self._disconnect()
            raise

    async def _ensure_consumer(self, js: JetStreamContext, stream: str, config: Any) -> None:
        """Create the group's durable consumer, or check the existing one reads our subject and update it."""
        nats_errors = require("nats.js.errors", "nats", "nats-py")
        try:
            try:
                info = await js.consumer_info(stream, self.durable)
            except nats_errors.NotFoundError:
                info = None
            if info is not None:
                existing = info.config
                if (existing.filter_subject or "") != self.url.topic:
                    raise BrokerError(
                        f"consumer group '{self.group}' (durable consumer '{self.durable}' of stream '{stream}') "
                        f"already reads subject '{existing.filter_subject or '>'}', not '{self.url.topic}'; "
                        "use another group name for this subject"
                    )
                if existing.ack_wait == config.ack_wait and (
                    config.max_ack_pending is None or existing.max_ack_pending == config.max_ack_pending
                ):
                    return
                logger.info("updating durable consumer %s of stream %s: ack_wait %ss, max_ack_pending %s",
                            self.durable, stream, config.ack_wait, config.max_ack_pending)
            # Create-or-update: two members starting together both succeed with the same config.
            await js.add_consumer(stream, config)
        except BrokerError:
            raise
        except (TimeoutError, OSError, ValueError, _nats_error()) as exc:
            raise BrokerError(f"cannot create consumer group '{self.group}' on stream '{stream}' for "
                              f"{self.url}: {_describe(exc)}") from None

    async def fetch(self, max_messages: int, timeout: float) -> list[Message]:
        psub = self._started()
        batch = max(1, max_messages)
        timeout = max(timeout, _MIN_FETCH_TIMEOUT)
        # nats-py's fetch returns as soon as the first messages are there, except when the group is at
        # max_ack_pending: then it holds what it got until the timeout. A short first try bounds that wait.
        first = min(timeout, _FIRST_FETCH_WAIT)
        msgs = await self._fetch(psub, batch, first)
        if not msgs and timeout > first:
            msgs = await self._fetch(psub, batch, timeout - first)
        out: list[Message] = []
        for msg in msgs:
            headers = dict(msg.headers or {})
            key = headers.get(KEY_HEADER, headers.get(_MSG_ID_HEADER))
            seq, timestamp = _position(msg)
            self._unacked[seq] = msg
            out.append(Message(id=str(seq), value=msg.data, key=key, headers=headers, timestamp=timestamp, token=msg))
        return out

    async def _fetch(self, psub: JetStreamContext.PullSubscription, batch: int, timeout: float) -> list[Msg]:
        try:
            msgs: list[Msg] = await psub.fetch(batch=batch, timeout=timeout)
        except TimeoutError:
            return []  # nothing arrived in time (also while reconnecting)
        except (OSError, _nats_error()) as exc:
            raise BrokerError(f"cannot fetch from {self.url} (group '{self.group}'): {_describe(exc)}") from None
        return msgs

    async def ack(self, messages: Sequence[Message]) -> None:
        self._started()
        if not messages:
            return
        nats_errors = require("nats.errors", "nats", "nats-py")
        msgs: list[Msg] = [m.token for m in messages]
        try:
            # Plain acks are one-way; the last one is a request, answered once the server has applied it
            # and (being processed in order) every ack before it: one round trip for the batch.
            for msg in msgs[:-1]:
                with contextlib.suppress(nats_errors.MsgAlreadyAckdError):
                    await msg.ack()
            try:
                await msgs[-1].ack_sync(timeout=_API_TIMEOUT)
            except nats_errors.MsgAlreadyAckdError:
                await self._started_nc().flush(timeout=int(_API_TIMEOUT))
        except (TimeoutError, OSError, _nats_error()) as exc:
            raise BrokerError(f"cannot acknowledge {len(msgs)} message(s) of {self.url} "
                              f"(group '{self.group}'): {_describe(exc)}") from None
        for m in messages:
            self._unacked.pop(int(m.id), None)

    async def lag(self) -> int | None:
        psub = self._started()
        try:
            info = await psub.consumer_info()
        except (TimeoutError, OSError, _nats_error()) as exc:
            raise BrokerError(f"cannot read the lag of group '{self.group}' on {self.url}: "
                              f"{_describe(exc)}") from None
        return int(info.num_pending or 0) + int(info.num_ack_pending or 0)

    async def close(self) -> None:
        if self._nc is None:
            return
        nats_errors = require("nats.errors", "nats", "nats-py")
        unacked, self._unacked = list(self._unacked.values()), {}
        try:
            for msg in unacked:
                with contextlib.suppress(nats_errors.MsgAlreadyAckdError):
                    await msg.nak()
        except Exception as exc:  # they come back after ack_wait anyway
            logger.warning("could not hand back unacknowledged messages of %s: %s", self.url, _describe(exc))
        await self._disconnect()

    async def _disconnect(self) -> None:
        nc, self._nc, self._psub = self._nc, None, None
        if nc is not None:
            await _close(nc, self.url)

    def _started(self) -> JetStreamContext.PullSubscription:
        if self._psub is None:
            raise BrokerError(f"the NATS source for {self.url} is not started")
        return self._psub

    def _started_nc(self) -> Client:
        if self._nc is None:
            raise BrokerError(f"the NATS source for {self.url} is not started")
        return self._nc


class NatsSink(Sink):
    """Publishes to one subject through JetStream, each record confirmed by its PubAck.

    Args:
        url: the subject and options (see the module docstring; ``ack_wait`` and
            ``max_ack_pending`` are accepted and ignored, so one URL serves both sides).
    """

    def __init__(self, url: StreamUrl) -> None:
        url.refuse_unknown(_OPTIONS)
        _positive(url, "ack_wait", 30.0)
        _optional_count(url, "max_ack_pending")
        if any(token in ("*", ">") for token in url.topic.split(".")):
            raise ConfigError(f"cannot publish to the wildcard subject '{url.topic}' of {url}")
        self.url = url
        self.stream: str | None = url.options.get("stream") or None
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None

    async def start(self) -> None:
        self._nc = await _connect(self.url, name="shipyard sink")
        try:
            self._js = self._nc.jetstream(timeout=_API_TIMEOUT, publish_async_max_pending=_MAX_PENDING_PUBLISHES)
            self.stream = await _ensure_stream(self._js, self.url, self.stream)
        except BaseException:
            await self.close()
            raise

    async def send(self, records: Sequence[Record]) -> None:
        if self._js is None:
            raise BrokerError(f"the NATS sink for {self.url} is not started")
        if not records:
            return
        for at in range(0, len(records), _MAX_PENDING_PUBLISHES):
            await self._send(records[at:at + _MAX_PENDING_PUBLISHES])

    async def _send(self, records: Sequence[Record]) -> None:
        assert self._js is not None
        futures: list[asyncio.Future[Any]] = []
        publish = self._js.publish_async
        topic, stream = self.url.topic, self.stream
        try:
            # publish_async writes every record before waiting: one connection keeps them in order,
            # and the PubAcks come back concurrently (~8x faster than awaiting each publish). No
            # wait_stall: with it every publish is a task and a trip through the event loop, and the
            # client flushes each record in its own write; without it a publish never suspends (this
            # sink is the connection's only publisher and sends at most _MAX_PENDING_PUBLISHES at once,
            # all answered or cancelled before the next send), so a batch leaves in one write.
            for record in records:
                headers = dict(record.headers)
                if record.key is not None:
                    headers[KEY_HEADER] = record.key
                futures.append(await publish(topic, record.value, stream=stream, headers=headers or None))
        except (TimeoutError, OSError, _nats_error()) as exc:
            await _settle(futures)
            raise BrokerError(f"cannot publish to {self.url}: {_describe(exc)}") from None
        try:
            done, pending = await asyncio.wait(futures, timeout=_API_TIMEOUT)
        finally:  # also when the caller cancels us: an unanswered future would hold a publish slot forever
            for future in futures:
                future.cancel()
        failures = [exc for exc in (f.exception() for f in done) if exc is not None]
        if failures or pending:
            cause = _describe(failures[0]) if failures else f"no PubAck within {_API_TIMEOUT:.0f}s"
            raise BrokerError(f"{len(failures) + len(pending)} of {len(records)} record(s) were not confirmed "
                              f"by {self.url}: {cause}")
        seqs = [f.result().seq for f in futures]
        if seqs != sorted(seqs):  # not expected on one connection; the records are stored all the same
            logger.warning("records sent to %s were stored out of order (sequences %s)", self.url, seqs)

    async def close(self) -> None:
        nc, self._nc, self._js = self._nc, None, None
        if nc is not None:
            await _close(nc, self.url)


def _position(msg: Msg) -> tuple[int, float]:
    """(stream sequence, stored at in seconds) of a JetStream message, from its ack subject.

    The subject is ``$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<ns>.<pending>``,
    or with ``<domain>.<account hash>.`` after ``$JS.ACK.`` (and maybe a token at the end) on newer
    servers. Read here directly: nats-py's ``msg.metadata`` builds dataclasses and a datetime per
    message, ~12 µs, as much as the rest of the consume-produce-acknowledge loop.
    """
    tokens = (msg.reply or "").split(".")
    if tokens[:2] == ["$JS", "ACK"]:
        if len(tokens) == 9:
            return int(tokens[5]), int(tokens[7]) / 1e9
        if len(tokens) >= 11:
            return int(tokens[7]), int(tokens[9]) / 1e9
    meta = msg.metadata  # anything else: let the client say (and raise on what is not JetStream's)
    return meta.sequence.stream, meta.timestamp.timestamp()


async def _settle(futures: list[asyncio.Future[Any]]) -> None:
    """Cancel what is still waiting and retrieve the rest, so no future's exception goes unread."""
    for future in futures:
        future.cancel()
    await asyncio.gather(*futures, return_exceptions=True)


async def _connect(url: StreamUrl, *, name: str) -> Client:
    """Connect, failing within seconds when no server answers; reconnect patiently afterwards."""
    nats = require("nats", "nats", "nats-py")
    hosts = [h.strip() for h in (url.hosts or _DEFAULT_HOST).split(",") if h.strip()]
    servers = [f"{url.scheme}://{host}" for host in hosts]
    # user:password@ logs in; a user name alone is a token
    user, password = (url.username, url.password) if url.password else (None, None)
    token = url.username if url.username and not url.password else None
    errors: list[BaseException] = []
    conn: list[Client] = []  # set once connected: before that, errors are collected, not logged

    async def on_error(exc: Exception) -> None:
        if conn:
            logger.warning("NATS connection to %s: %s", url, _describe(exc))
        else:
            errors.append(exc)

    async def on_disconnected() -> None:
        if conn and not conn[0].is_closed:  # close() reports a disconnect too
            logger.warning("disconnected from NATS at %s; reconnecting", url)

    async def on_reconnected() -> None:
        logger.info("reconnected to NATS at %s", url)

    nc: Client = nats.NATS()
    try:
        # The overall deadline guards against nats-py hanging after a failed TLS handshake
        # (nats-io/nats.py#718: connect() never returns from closing the broken transport).
        await asyncio.wait_for(nc.connect(
            servers, name=name, connect_timeout=_CONNECT_TIMEOUT, allow_reconnect=True,
            max_reconnect_attempts=_FIRST_CONNECT_ATTEMPTS, reconnect_time_wait=_FIRST_CONNECT_WAIT,
            error_cb=on_error, disconnected_cb=on_disconnected, reconnected_cb=on_reconnected,
            user=user, password=password, token=token,
        ), _CONNECT_DEADLINE)
    except (TimeoutError, OSError, nats.errors.Error) as exc:
        _abort(nc)
        # What the server said (e.g. 'Authorization Violation') tells more than the connection reset after it.
        said = [e for e in errors if isinstance(e, nats.errors.Error | ssl.SSLError)]
        cause = (said or errors or [exc])[-1]
        why = f"no answer within {_CONNECT_TIMEOUT}s" if isinstance(cause, TimeoutError) else _describe(cause)
        raise BrokerError(f"cannot connect to NATS at {url}: {why}") from None
    conn.append(nc)
    # nats-py reads these on every reconnect: once connected, keep trying for about a minute.
    nc.options["max_reconnect_attempts"] = _RECONNECT_ATTEMPTS
    nc.options["reconnect_time_wait"] = _RECONNECT_WAIT
    return nc


def _abort(nc: Client) -> None:
    """Drop a connection that failed to open, without awaiting anything that could hang."""
    transport = getattr(nc, "_transport", None)  # private, hence the getattr: cleanup is best effort
    with contextlib.suppress(Exception):
        if transport is not None:
            transport._io_writer.transport.abort()


async def _close(nc: Client, url: StreamUrl) -> None:
    try:
        await nc.close()
    except Exception as exc:  # closing is best effort: the server drops the connection anyway
        logger.warning("error closing the NATS connection to %s: %s", url, _describe(exc))


async def _ensure_stream(js: JetStreamContext, url: StreamUrl, wanted: str | None) -> str:
    """The stream capturing ``url.topic``: ``wanted`` or the one found, created when there is none."""
    nats_errors = require("nats.js.errors", "nats", "nats-py")
    nats_api = require("nats.js.api", "nats", "nats-py")
    subject = url.topic
    try:
        try:
            found: str | None = await js.find_stream_name_by_subject(subject)
        except nats_errors.NotFoundError:
            found = None
        if found is not None and (wanted is None or found == wanted):
            return found
        if found is not None:
            raise BrokerError(f"subject '{subject}' of {url} is captured by stream '{found}', not by "
                              f"stream '{wanted}' named in the URL")
        name = wanted or stream_name(subject)
        if wanted is not None:
            try:
                await js.stream_info(wanted)
            except nats_errors.NotFoundError:
                pass
            else:
                raise BrokerError(f"stream '{wanted}' named in {url} does not capture subject '{subject}'")
        logger.info("creating JetStream stream %s for subject %s", name, subject)
        try:
            # Identical config is idempotent, so members starting together all succeed.
            await js.add_stream(name=name, subjects=[subject], storage=nats_api.StorageType.FILE)
        except nats_errors.BadRequestError as exc:
            raise BrokerError(
                f"cannot create stream '{name}' for subject '{subject}' of {url}: {_describe(exc)}; "
                "name an existing stream with ?stream=NAME or create one that captures the subject"
            ) from None
        return name
    except BrokerError:
        raise
    except (TimeoutError, OSError, ValueError, nats_errors.Error) as exc:
        raise BrokerError(f"cannot find or create the stream for {url}: {_describe(exc)}") from None


def _nats_error() -> type[Exception]:
    error: type[Exception] = require("nats.errors", "nats", "nats-py").Error
    return error


def _describe(exc: BaseException) -> str:
    """nats-py errors often have an empty or bare 'nats: ...' text; name the type too."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _positive(url: StreamUrl, name: str, default: float) -> float:
    value = url.float_option(name, default)
    if value <= 0:
        raise ConfigError(f"stream URL option {name}={value!r} must be more than 0 (seconds)")
    return value


def _optional_count(url: StreamUrl, name: str) -> int | None:
    if name not in url.options:
        return None
    value = url.int_option(name, 0)
    if value < 1:
        raise ConfigError(f"stream URL option {name}={value!r} must be a whole number of at least 1")
    return value
