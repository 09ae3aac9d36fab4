"""The feedback path's moving parts in a server: the feedback stream, pruning, and the Prometheus series.

* ``FeedbackStream`` consumes a broker topic (``monitoring.feedback.stream``) whose
  messages are each one JSON feedback item. Items that apply (accepted, duplicate,
  late) are acknowledged once stored; an unknown id or an unreadable message goes to
  the dead-letter topic (``monitoring.feedback.dead_letter``, default: the topic +
  ``.dead``) with its reason, then is acknowledged. Nothing is acknowledged before it
  was applied or dead-lettered, so a crash redelivers it, and applying is idempotent.
  The loop never dies: a failure is logged and the batch is read again after a pause.
* ``prune_loop`` drops kept predictions older than the join window, every hour.
* ``FeedbackCollector`` shows on ``/metrics``:
  ``shipyard_feedback_total{model,outcome}`` (items this process took),
  ``shipyard_label_coverage_ratio{model,version}`` and
  ``shipyard_realized_metric{model,version,metric}`` over the last join window, read
  from the database at most every ``refresh_seconds``, or sooner once feedback arrived.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import anyio.to_thread
import orjson
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from shipyard.errors import InvalidInput
from shipyard.monitoring.feedback import FeedbackItem, FeedbackStore, Outcome, parse_item
from shipyard.monitoring.quality import quality
from shipyard.streams.broker import Message, Record, StreamUrl, open_sink, open_source

logger = logging.getLogger(__name__)

__all__ = ["DEAD_LETTER_SUFFIX", "FeedbackCollector", "FeedbackStream", "dead_letter_url", "prune_loop"]

DEAD_LETTER_SUFFIX = ".dead"


def dead_letter_url(stream: StreamUrl, dead_letter: str = "") -> StreamUrl:
    """Where refused feedback messages go: ``dead_letter`` when set, else the stream's topic + ``.dead``."""
    return StreamUrl.parse(dead_letter) if dead_letter else stream.with_topic(stream.topic + DEAD_LETTER_SUFFIX)


def _dead_letter(message: Message, outcome: str, reason: str) -> Record:
    doc: dict[str, Any] = {"id": message.id, "key": message.key, "outcome": outcome, "reason": reason,
                           "payload": message.value.decode("utf-8", "replace"), "failed_at": time.time()}
    return Record(orjson.dumps(doc), key=message.key if message.key is not None else message.id,
                  headers={"outcome": outcome})


async def prune_loop(store: FeedbackStore, stop: asyncio.Event, every_seconds: float = 3600.0) -> None:
    """Drop kept predictions past the join window now and every ``every_seconds`` until ``stop``; never dies."""
    while not stop.is_set():
        try:
            dropped = await anyio.to_thread.run_sync(store.prune)
            if dropped:
                logger.info("dropped %d kept predictions older than the join window", dropped)
        except Exception:
            logger.exception("pruning kept predictions failed; trying again later")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every_seconds)


class FeedbackStream:
    """Applies the feedback items of a stream topic; refused ones go to a dead-letter topic.

    Args:
        store: where items are applied.
        url: the feedback topic (resolved: a ``local://`` URL with its path).
        dead_letter: the dead-letter topic.
        group, consumer: the consumer group and this member's name.
    """

    name = "feedback stream"

    def __init__(self, store: FeedbackStore, url: StreamUrl, dead_letter: StreamUrl, *, group: str,
                 consumer: str, batch: int = 256) -> None:
        self.store = store
        self.url = url
        self.dead_letter_url = dead_letter
        self.group = group
        self.consumer = consumer
        self.batch = batch
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.applied = 0
        self.dead_letters = 0

    async def start(self) -> None:
        """Open the topics (fails fast on a bad broker) and start consuming."""
        source = open_source(self.url, group=self.group, consumer=self.consumer)
        sink = open_sink(self.dead_letter_url)
        await source.start()
        try:
            await sink.start()
        except Exception:
            await source.close()
            raise
        self._task = asyncio.get_running_loop().create_task(self._run(source, sink), name=self.name)
        logger.info("feedback from %s (refused messages to %s)", self.url, self.dead_letter_url)

    async def stop(self) -> None:
        """Finish the batch being applied (and acknowledge it), then close."""
        self._stop.set()
        if self._task is not None:
            await self._task

    async def _run(self, source: Any, sink: Any) -> None:
        pause = 0.1
        try:
            while not self._stop.is_set():
                try:
                    messages = await source.fetch(self.batch, 0.25)
                    if messages:
                        await self._handle(messages, sink)
                        await source.ack(messages)
                    pause = 0.1
                except Exception:
                    logger.exception("applying feedback from %s failed; reading it again in %.1fs", self.url, pause)
                    await asyncio.sleep(pause)
                    pause = min(pause * 2, 5.0)
        finally:
            with contextlib.suppress(Exception):
                await source.close()
            with contextlib.suppress(Exception):
                await sink.close()

    async def _handle(self, messages: list[Message], sink: Any) -> None:
        items: list[tuple[Message, FeedbackItem]] = []
        refused: list[Record] = []
        invalid: list[Outcome] = []
        for m in messages:
            try:
                items.append((m, parse_item(orjson.loads(m.value))))
            except (orjson.JSONDecodeError, InvalidInput) as exc:
                reason = str(exc) if isinstance(exc, InvalidInput) else f"not JSON: {exc}"
                refused.append(_dead_letter(m, "invalid", reason))
                invalid.append(Outcome("invalid", reason=reason))
        if items:
            outcomes = await anyio.to_thread.run_sync(self.store.submit, [i for _, i in items])
            for (m, _), outcome in zip(items, outcomes, strict=True):
                if outcome.outcome == "unknown":
                    refused.append(_dead_letter(m, "unknown", outcome.reason or "unknown id"))
                else:
                    self.applied += 1
        if refused:
            await sink.send(refused)  # before the acknowledgement: a crash here redelivers, never loses
            self.dead_letters += len(refused)
        self.store.count(invalid)


class FeedbackCollector:
    """Feedback counts and realized metrics of the served models on ``/metrics``.

    Args:
        store: the feedback store (its counts, its database and join window).
        models: the model names to report (the server's served names).
        flush: called before reading (writes buffered predictions).
        refresh_seconds: the least time between two reads of the database.
        clock: monotonic seconds; ``wall``: epoch seconds (the window's end).
    """

    def __init__(self, store: FeedbackStore, models: Callable[[], Iterable[str]], *,
                 flush: Callable[[], None] | None = None, refresh_seconds: float = 10.0,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time) -> None:
        self.store = store
        self.models = models
        self.flush = flush
        self.refresh_seconds = refresh_seconds
        self._clock = clock
        self._wall = wall
        self._taken: float | None = None
        self._coverage: dict[tuple[str, str], float] = {}
        self._metrics: dict[tuple[str, str, str], float] = {}
        self._seen: dict[tuple[str, str], int] = {}
        self.refreshes = 0

    def registry(self) -> CollectorRegistry:
        """A registry holding just this collector (``ServingMetrics.include`` it)."""
        registry = CollectorRegistry()
        registry.register(self)
        return registry

    def describe(self) -> Iterable[Metric]:
        return self._families({}, {}, {})  # names only: registering reads no database

    def collect(self) -> Iterator[Metric]:
        now = self._clock()
        counts = self.store.counts()
        # stale, or feedback arrived since (the metrics can only have moved then, or with new predictions)
        if self._taken is None or now - self._taken >= self.refresh_seconds or counts != self._seen:
            self._taken, self._seen = now, counts
            try:
                self._read()
                self.refreshes += 1
            except Exception:
                logger.exception("reading realized metrics for /metrics failed; serving the previous numbers")
        return iter(self._families(counts, self._coverage, self._metrics))

    def _read(self) -> None:
        if self.flush is not None:
            self.flush()
        since = self._wall() - self.store.join_window_seconds
        coverage: dict[tuple[str, str], float] = {}
        metrics: dict[tuple[str, str, str], float] = {}
        for model in sorted(set(self.models())):
            report = quality(self.store.database, model, since=since, by=("version",))
            for g in report["groups"]:
                version = str(g["version"])
                if g["coverage"] is not None:
                    coverage[(model, version)] = g["coverage"]
                for name, value in g["metrics"].items():
                    metrics[(model, version, name)] = value
        self._coverage, self._metrics = coverage, metrics

    @staticmethod
    def _families(counts: dict[tuple[str, str], int], coverage: dict[tuple[str, str], float],
                  metrics: dict[tuple[str, str, str], float]) -> list[Metric]:
        total = CounterMetricFamily("shipyard_feedback", "Feedback items this server took, by outcome "
                                    "(accepted, duplicate, late, unknown, invalid)", labels=["model", "outcome"])
        cov = GaugeMetricFamily("shipyard_label_coverage_ratio", "Labelled rows / served rows of the version over "
                                "the last join window", labels=["model", "version"])
        realized = GaugeMetricFamily("shipyard_realized_metric", "A realized metric of the version over the last "
                                     "join window (accuracy, precision, recall, f1, roc_auc; mae, rmse)",
                                     labels=["model", "version", "metric"])
        for (model, outcome), n in sorted(counts.items()):
            total.add_metric([model, outcome], n)
        for (model, version), value in sorted(coverage.items()):
            cov.add_metric([model, version], value)
        for (model, version, name), value in sorted(metrics.items()):
            realized.add_metric([model, version, name], value)
        return [total, cov, realized]
