"""The stream consumer loop: fetch a micro-batch, predict once, send results, then acknowledge.

Three tasks, in fetch order:

* the fetcher collects up to ``batch_size`` messages (waiting at most
  ``max_wait_ms`` for company once one arrived) and queues the batch; when
  ``max_in_flight + 3`` batches are read and not yet acknowledged, it waits for
  an acknowledgement before reading more, so a slow model or sink slows the
  reading instead of filling memory (backpressure);
* the scorer takes batches in order and scores each (one model call per batch);
* the deliverer takes every batch scored so far, sends their results and dead
  letters (one send per sink) and, only when the broker confirmed them,
  acknowledges their messages (one ack). While it waits for the broker the
  scorer goes on, so under load one broker round trip carries several batches
  (group commit), and with a fast model the loop runs at the broker's pace
  rather than one round trip per batch. Deliveries run one at a time, so
  batches finish in fetch order (which keeps Kafka's offset commits contiguous).

Nothing is acknowledged that is not on the sink, so a crash at any point leaves
the broker to deliver the unfinished messages again (at-least-once; outputs
carry the input id for consumers that need to drop duplicates). Failures of the
broker or model (not of a message) are retried with backoff: the loop never
dies of them, it waits. ``stop`` starts a drain: no new fetches, the batches
already read are finished and acknowledged, then everything closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from shipyard.errors import InvalidOption, ShipyardError
from shipyard.registry import LoadedModel
from shipyard.streams.broker import Message, Record, Sink, Source
from shipyard.streams.scoring import RunModel, Scored, score

logger = logging.getLogger(__name__)

ModelProvider = Callable[[], Awaitable[LoadedModel]]
T = TypeVar("T")


class _GaveUp:
    """A stop's drain deadline passed while a step kept failing."""


@dataclass
class _Scored:
    """A batch scored and waiting to be delivered."""

    batch: list[Message]
    scored: Scored
    fetched: float


@dataclass(frozen=True)
class StreamOptions:
    batch_size: int = 64
    """Most messages in one model call."""
    max_wait_ms: float = 5.0
    """How long a started batch waits for more messages before it goes (0: take what is there)."""
    max_in_flight: int = 4
    """Batches waiting for the model/sink before the fetcher stops reading (backpressure): at most
    ``max_in_flight + 3`` batches are read and not yet acknowledged."""
    poll_seconds: float = 0.25
    """Longest single wait on an empty source; bounds how fast a stop is noticed."""
    drain_seconds: float = 30.0
    """After a stop, how long to keep retrying a failing sink/model before leaving the rest to redelivery."""
    lag_interval_seconds: float = 5.0
    """How often the consumer-lag gauge asks the broker."""

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise InvalidOption(f"batch_size must be at least 1, got {self.batch_size}",
                                option="batch_size", expected=">= 1", got=self.batch_size)
        if self.max_wait_ms < 0:
            raise InvalidOption(f"max_wait_ms must be 0 or more, got {self.max_wait_ms}",
                                option="max_wait_ms", expected=">= 0", got=self.max_wait_ms)
        if self.max_in_flight < 1:
            raise InvalidOption(f"max_in_flight must be at least 1, got {self.max_in_flight}",
                                option="max_in_flight", expected=">= 1", got=self.max_in_flight)


class StreamMetrics:
    """Prometheus series of one or more consumers, labelled by source."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.messages = Counter(
            "shipyard_stream_messages", "Messages finished, by outcome (predicted or dead_letter)",
            ["source", "outcome"], registry=self.registry,
        )
        self.batch_size = Histogram(
            "shipyard_stream_batch_size", "Messages per model call", ["source"],
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024), registry=self.registry,
        )
        self.latency = Histogram(
            "shipyard_stream_latency_seconds", "From fetch to acknowledgement, per batch", ["source"],
            registry=self.registry,
        )
        self.lag = Gauge(
            "shipyard_stream_lag_messages", "Messages of the source the group has not finished (broker's count)",
            ["source"], registry=self.registry, multiprocess_mode="max",  # every worker of a server reads one count
        )
        self.in_flight = Gauge(
            "shipyard_stream_in_flight_messages", "Messages fetched by this consumer, not yet acknowledged",
            ["source"], registry=self.registry, multiprocess_mode="livesum",
        )
        self.retries = Counter(
            "shipyard_stream_retries", "Broker or model failures waited out, by stage", ["source", "stage"],
            registry=self.registry,
        )


@dataclass
class StreamStats:
    predicted: int = 0
    dead_letters: int = 0
    batches: int = 0
    unfinished: int = 0
    """Messages fetched but not acknowledged when the consumer stopped (the broker delivers them again)."""
    started: float = field(default_factory=time.monotonic)


class StreamConsumer:
    def __init__(
        self,
        source: Source,
        sink: Sink,
        dead_letters: Sink,
        model: ModelProvider,
        run_model: RunModel,
        options: StreamOptions | None = None,
        metrics: StreamMetrics | None = None,
        consumer_name: str | None = None,
    ) -> None:
        """
        Args:
            consumer_name: written into each result, to trace which group member produced it.
            model: returns the model to use for the next batch (re-resolved, so alias moves apply).
            run_model: calls the model on validated inputs (an executor's ``run``).
        """
        self.source = source
        self.sink = sink
        self.dead_letter_sink = dead_letters
        self.model = model
        self.run_model = run_model
        self.options = options or StreamOptions()
        self.metrics = metrics or StreamMetrics()
        self.stats = StreamStats()
        self.name = str(source.url)
        self.consumer_name = consumer_name
        self._give_up_at: float | None = None
        self.in_flight = 0
        """Messages fetched and not yet acknowledged."""
        self._in_flight_gauge = self.metrics.in_flight.labels(self.name)

    async def run(self, stop: asyncio.Event, started: Callable[[], None] | None = None) -> StreamStats:
        """Consume until ``stop`` is set, then drain. Returns what was done."""
        opened: list[Source | Sink] = []
        try:
            # Sinks first: a producer connects (Kafka's idempotent producer also gets its producer id) while
            # the source joins its group, instead of stalling the first send by up to a second.
            for end in (self.sink, self.dead_letter_sink, self.source):
                await end.start()
                opened.append(end)
            if started is not None:
                started()
            # unbounded: the fetcher takes a slot per batch, so at most max_in_flight + 3 are ever queued
            queue: asyncio.Queue[list[Message] | None] = asyncio.Queue()
            slots = asyncio.Semaphore(self.options.max_in_flight + 3)
            helpers = [
                asyncio.create_task(self._fetch_loop(queue, slots, stop), name="stream-fetch"),
                asyncio.create_task(self._lag_loop(stop), name="stream-lag"),
                asyncio.create_task(self._drain_clock(stop), name="stream-drain-clock"),
            ]
            try:
                await self._process_loop(queue, slots)
            finally:
                for task in helpers:
                    task.cancel()
                for task in helpers:
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
                self.stats.unfinished += sum(len(b) for b in _drain(queue))
        finally:
            for end in reversed(opened):
                try:
                    await end.close()
                except Exception:
                    logger.exception("closing %s failed", end.url)
        return self.stats

    # -- fetching -------------------------------------------------------------------

    async def _fetch_loop(
        self, queue: asyncio.Queue[list[Message] | None], slots: asyncio.Semaphore, stop: asyncio.Event
    ) -> None:
        backoff = _Backoff()
        while not stop.is_set():
            if not await _acquire_or_stop(slots, stop):
                break
            try:
                batch = await self._collect(stop)
            except Exception as exc:
                slots.release()
                self.metrics.retries.labels(self.name, "fetch").inc()
                logger.warning("fetching from %s failed (%s); retrying in %.1fs", self.name, exc, backoff.next)
                await _sleep_or_stop(backoff.wait(), stop)
                continue
            backoff.reset()
            if batch:
                self._count_in_flight(len(batch))
                queue.put_nowait(batch)
            else:
                slots.release()
        queue.put_nowait(None)

    async def _collect(self, stop: asyncio.Event) -> list[Message]:
        """One batch: the first message waits up to poll_seconds, the rest up to max_wait_ms after it."""
        opts = self.options
        batch = await self.source.fetch(opts.batch_size, opts.poll_seconds)
        if not batch or len(batch) >= opts.batch_size or opts.max_wait_ms <= 0:
            return batch
        until = time.monotonic() + opts.max_wait_ms / 1e3
        while len(batch) < opts.batch_size and not stop.is_set():
            left = until - time.monotonic()
            if left <= 0:
                break
            batch.extend(await self.source.fetch(opts.batch_size - len(batch), left))
        return batch

    # -- processing ------------------------------------------------------------------------

    def _count_in_flight(self, change: int) -> None:
        self.in_flight += change
        self._in_flight_gauge.set(self.in_flight)

    async def _drain_clock(self, stop: asyncio.Event) -> None:
        await stop.wait()
        self._give_up_at = time.monotonic() + self.options.drain_seconds
        logger.info("stopping %s: finishing what was fetched (%d message(s))", self.name,
                    self.in_flight)

    async def _process_loop(self, queue: asyncio.Queue[list[Message] | None], slots: asyncio.Semaphore) -> None:
        """Score batches in order and hand them to the deliverer, which sends and acknowledges them in order."""
        scored_batches: asyncio.Queue[_Scored | None] = asyncio.Queue()
        deliverer = asyncio.create_task(self._deliver_loop(scored_batches, slots), name="stream-deliver")
        try:
            while True:
                batch = await queue.get()
                if batch is None:
                    break
                fetched = time.monotonic()
                received_at = time.time()
                scored = await self._retry("model", lambda: self._score(batch, received_at))  # noqa: B023 (awaited here)
                if isinstance(scored, _GaveUp) or deliverer.done():
                    # nothing after a batch that was not acknowledged may be
                    self._count_in_flight(-len(batch))
                    self.stats.unfinished += len(batch) + sum(len(b) for b in _drain(queue))
                    break
                scored_batches.put_nowait(_Scored(batch, scored, fetched))
                # let the deliverer start its send now, so the broker round trip overlaps the next model call
                await asyncio.sleep(0)
        except BaseException:
            deliverer.cancel()
            raise
        finally:
            scored_batches.put_nowait(None)
            with contextlib.suppress(asyncio.CancelledError):
                await deliverer

    async def _deliver_loop(self, scored_batches: asyncio.Queue[_Scored | None], slots: asyncio.Semaphore) -> None:
        """Deliver every batch scored so far in one send and one ack; stop at the first that cannot be."""
        while True:
            item = await scored_batches.get()
            if item is None:
                return
            group = [item]
            last = False
            while not scored_batches.empty():
                more = scored_batches.get_nowait()
                if more is None:
                    last = True
                    break
                group.append(more)
            delivered = await self._deliver(group)
            size = sum(len(g.batch) for g in group)
            self._count_in_flight(-size)
            for _ in group:
                slots.release()
            if not delivered:
                rest = _drain(scored_batches)
                self._count_in_flight(-sum(len(g.batch) for g in rest))
                self.stats.unfinished += size + sum(len(g.batch) for g in rest)
                return
            if last:
                return

    async def _deliver(self, group: list[_Scored]) -> bool:
        """Send the batches' results and dead letters, then acknowledge them; False when a stop's drain ran out."""
        if len(group) == 1:
            results, dead_letters, messages = group[0].scored.results, group[0].scored.dead_letters, group[0].batch
        else:
            results = [r for g in group for r in g.scored.results]
            dead_letters = [r for g in group for r in g.scored.dead_letters]
            messages = [m for g in group for m in g.batch]
        if isinstance(await self._retry("sink", lambda: self._send(results, dead_letters)), _GaveUp):
            return False
        if isinstance(await self._retry("ack", lambda: self.source.ack(messages)), _GaveUp):
            return False
        now = time.monotonic()
        for g in group:
            self.stats.batches += 1
            self.metrics.batch_size.labels(self.name).observe(len(g.batch))
            self.metrics.latency.labels(self.name).observe(now - g.fetched)
        self.stats.predicted += len(results)
        self.stats.dead_letters += len(dead_letters)
        self.metrics.messages.labels(self.name, "predicted").inc(len(results))
        if dead_letters:
            self.metrics.messages.labels(self.name, "dead_letter").inc(len(dead_letters))
            for r in dead_letters:
                logger.warning("dead letter from %s: %s", self.name, r.value[:300].decode("utf-8", "replace"))
        return True

    async def _score(self, batch: list[Message], received_at: float) -> Scored:
        model = await self.model()
        return await score(batch, model, self.run_model, source=self.name, received_at=received_at,
                           consumer=self.consumer_name)

    async def _send(self, results: list[Record], dead_letters: list[Record]) -> None:
        sends: list[Awaitable[None]] = []
        if results:
            sends.append(self.sink.send(results))
        if dead_letters:
            sends.append(self.dead_letter_sink.send(dead_letters))
        if len(sends) == 1:
            await sends[0]
        else:
            await asyncio.gather(*sends)

    async def _retry(self, stage: str, step: Callable[[], Awaitable[T]]) -> T | _GaveUp:
        """Run ``step`` until it succeeds, or until a stop's drain deadline passed."""
        backoff = _Backoff()
        while True:
            try:
                return await step()
            except (ShipyardError, OSError) as exc:
                error: Exception = exc
            except Exception as exc:  # an adapter bug must not kill the loop either
                logger.exception("unexpected error at %s of %s", stage, self.name)
                error = exc
            self.metrics.retries.labels(self.name, stage).inc()
            if self._give_up_at is not None and time.monotonic() + backoff.next > self._give_up_at:
                logger.error("giving up on a batch from %s at %s (%s); the broker will deliver it again",
                             self.name, stage, error)
                return _GaveUp()
            logger.warning("%s of a batch from %s failed (%s); retrying in %.1fs", stage, self.name, error,
                           backoff.next)
            await asyncio.sleep(backoff.wait())

    # -- lag ---------------------------------------------------------------------------------

    async def _lag_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                lag = await self.source.lag()
                if lag is not None:
                    self.metrics.lag.labels(self.name).set(lag)
            except Exception as exc:
                logger.debug("lag of %s unknown: %s", self.name, exc)
            await _sleep_or_stop(self.options.lag_interval_seconds, stop)


class _Backoff:
    """Doubling waits from 0.1 s to 5 s."""

    def __init__(self) -> None:
        self.next = 0.1

    def wait(self) -> float:
        now, self.next = self.next, min(self.next * 2, 5.0)
        return now

    def reset(self) -> None:
        self.next = 0.1


async def _sleep_or_stop(seconds: float, stop: asyncio.Event) -> None:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await stop.wait()


async def _acquire_or_stop(slots: asyncio.Semaphore, stop: asyncio.Event) -> bool:
    """Take a slot (True), or give up waiting for one once ``stop`` is set (False)."""
    if not slots.locked():
        await slots.acquire()  # free: no wait
        return True
    acquiring = asyncio.ensure_future(slots.acquire())
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({acquiring, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
        if not acquiring.done():
            acquiring.cancel()
    if acquiring.cancelled():
        return False
    if stop.is_set():
        slots.release()
        return False
    return True


def _drain(queue: asyncio.Queue[T | None]) -> list[T]:
    out = []
    while not queue.empty():
        item = queue.get_nowait()
        if item is not None:
            out.append(item)
    return out
