"""The stream consumer loop: fetch a micro-batch, predict once, send results, then acknowledge.

Two tasks share a bounded queue:

* the fetcher collects up to ``batch_size`` messages (waiting at most
  ``max_wait_ms`` for company once one arrived) and queues the batch; when
  ``max_in_flight`` batches wait, it blocks, so a slow model or sink slows the
  reading instead of filling memory (backpressure);
* the processor takes batches in order: scores them (one model call), sends
  results and dead letters, and only when the broker confirmed both, acknowledges
  the batch. The next batch is scored while the previous one is being sent and
  acknowledged, but a batch is sent only after its predecessor was acknowledged,
  so batches finish in fetch order (which keeps Kafka's offset commits contiguous).

At most ``max_in_flight + 3`` batches are read and not yet acknowledged: the
queued ones, the one being collected, the one being scored, the one being sent.

Nothing is acknowledged that is not on the sink, so a crash at any point leaves
the broker to deliver the unfinished messages again (at-least-once; outputs
carry the input id for consumers that need to drop duplicates). Failures of the
broker or model (not of a message) are retried with backoff: the loop never
dies of them, it waits. ``stop`` starts a drain: no new fetches, the queued
batches are finished and acknowledged, then everything closes.
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
from shipyard.streams.broker import Message, Sink, Source
from shipyard.streams.scoring import RunModel, Scored, score

logger = logging.getLogger(__name__)

ModelProvider = Callable[[], Awaitable[LoadedModel]]
T = TypeVar("T")


class _GaveUp:
    """A stop's drain deadline passed while a step kept failing."""


@dataclass(frozen=True)
class StreamOptions:
    batch_size: int = 64
    """Most messages in one model call."""
    max_wait_ms: float = 5.0
    """How long a started batch waits for more messages before it goes (0: take what is there)."""
    max_in_flight: int = 4
    """Batches fetched and waiting for the model/sink before the fetcher stops reading (backpressure)."""
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

    async def run(self, stop: asyncio.Event, started: Callable[[], None] | None = None) -> StreamStats:
        """Consume until ``stop`` is set, then drain. Returns what was done."""
        opened: list[Source | Sink] = []
        try:
            for end in (self.source, self.sink, self.dead_letter_sink):
                await end.start()
                opened.append(end)
            if started is not None:
                started()
            queue: asyncio.Queue[list[Message] | None] = asyncio.Queue(self.options.max_in_flight)
            helpers = [
                asyncio.create_task(self._fetch_loop(queue, stop), name="stream-fetch"),
                asyncio.create_task(self._lag_loop(stop), name="stream-lag"),
                asyncio.create_task(self._drain_clock(stop), name="stream-drain-clock"),
            ]
            try:
                await self._process_loop(queue, stop)
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

    async def _fetch_loop(self, queue: asyncio.Queue[list[Message] | None], stop: asyncio.Event) -> None:
        backoff = _Backoff()
        while not stop.is_set():
            try:
                batch = await self._collect(stop)
            except Exception as exc:
                self.metrics.retries.labels(self.name, "fetch").inc()
                logger.warning("fetching from %s failed (%s); retrying in %.1fs", self.name, exc, backoff.next)
                await _sleep_or_stop(backoff.wait(), stop)
                continue
            backoff.reset()
            if batch:
                self._count_in_flight(len(batch))
                await queue.put(batch)
        await queue.put(None)

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
        self.metrics.in_flight.labels(self.name).set(self.in_flight)

    async def _drain_clock(self, stop: asyncio.Event) -> None:
        await stop.wait()
        self._give_up_at = time.monotonic() + self.options.drain_seconds
        logger.info("stopping %s: finishing what was fetched (%d message(s))", self.name,
                    self.in_flight)

    async def _process_loop(self, queue: asyncio.Queue[list[Message] | None], stop: asyncio.Event) -> None:
        """Score batch k+1 while batch k is being sent and acknowledged; acknowledgements stay in order."""
        delivering: asyncio.Task[bool] | None = None
        delivering_size = 0
        while True:
            batch = await queue.get()
            if batch is None:
                break
            fetched = time.monotonic()
            received_at = time.time()
            scored = await self._retry("model", lambda: self._score(batch, received_at))  # noqa: B023 (awaited here)
            if delivering is not None:
                ok = await delivering
                self._count_in_flight(-delivering_size)
                delivering = None
                if not ok:
                    self.stats.unfinished += delivering_size
                    scored = _GaveUp()  # nothing after a batch that was not acknowledged may be
            if isinstance(scored, _GaveUp):
                self._count_in_flight(-len(batch))
                self.stats.unfinished += len(batch) + sum(len(b) for b in _drain(queue))
                return
            delivering = asyncio.create_task(self._deliver(batch, scored, fetched))
            delivering_size = len(batch)
        if delivering is not None:
            ok = await delivering
            self._count_in_flight(-delivering_size)
            if not ok:
                self.stats.unfinished += delivering_size

    async def _deliver(self, batch: list[Message], scored: Scored, fetched: float) -> bool:
        """Send the batch's results and dead letters, then acknowledge it; False when a stop's drain ran out."""
        if isinstance(await self._retry("sink", lambda: self._send(scored)), _GaveUp):
            return False
        if isinstance(await self._retry("ack", lambda: self.source.ack(batch)), _GaveUp):
            return False
        self.stats.batches += 1
        self.stats.predicted += len(scored.results)
        self.stats.dead_letters += len(scored.dead_letters)
        self.metrics.messages.labels(self.name, "predicted").inc(len(scored.results))
        if scored.dead_letters:
            self.metrics.messages.labels(self.name, "dead_letter").inc(len(scored.dead_letters))
            for r in scored.dead_letters:
                logger.warning("dead letter from %s: %s", self.name, r.value[:300].decode("utf-8", "replace"))
        self.metrics.batch_size.labels(self.name).observe(len(batch))
        self.metrics.latency.labels(self.name).observe(time.monotonic() - fetched)
        return True

    async def _score(self, batch: list[Message], received_at: float) -> Scored:
        model = await self.model()
        return await score(batch, model, self.run_model, source=self.name, received_at=received_at,
                           consumer=self.consumer_name)

    async def _send(self, scored: Scored) -> None:
        sends: list[Awaitable[None]] = []
        if scored.results:
            sends.append(self.sink.send(scored.results))
        if scored.dead_letters:
            sends.append(self.dead_letter_sink.send(scored.dead_letters))
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


def _drain(queue: asyncio.Queue[list[Message] | None]) -> list[list[Message]]:
    out = []
    while not queue.empty():
        item = queue.get_nowait()
        if item is not None:
            out.append(item)
    return out
