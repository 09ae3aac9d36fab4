"""The server's Prometheus series: requests, latency, batches, in-flight requests, model loads.

``ServingMetrics`` owns one ``CollectorRegistry`` per server (never the process-wide
default, so two servers in one process keep their counts apart) and is a
``PredictionObserver``: the data plane's events reach it in batches on the
observers' thread. What no event carries comes through cheap methods the serving
core calls directly: ``batch`` (the batcher, once per model call), ``inflight``
(the request path), ``model_loaded`` (the repository).

Every series is recorded in the server process. Worker processes
(``hosting/workers.py``) only run model calls; the server measures them from the
outside (latency, batch duration), so no multiprocess collection is needed.

Label values are bounded so that a server cannot grow its series without limit:

* at most ``MetricsConfig.max_models`` distinct (model, version) pairs are kept
  as labels, in the order they are first seen; later ones are recorded under
  ``model="other", version="other"`` (and ``model="other"`` for per-model series);
* ``protocol`` is one of ``PROTOCOLS`` and ``outcome`` one of ``OUTCOMES``;
  anything else is recorded as ``other``.
"""

from __future__ import annotations

import logging
import platform
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import get_args

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.exposition import choose_encoder

from shipyard import __version__
from shipyard.config import MetricsConfig
from shipyard.context import Transport
from shipyard.monitoring.events import Observers, PredictionEvent

logger = logging.getLogger(__name__)

__all__ = ["LATENCY_BUCKETS", "OTHER", "OUTCOMES", "PROTOCOLS", "SIZE_BUCKETS", "ServingMetrics"]

OTHER = "other"
"""The label value of everything beyond a bound or outside a fixed set."""

PROTOCOLS: frozenset[str] = frozenset(get_args(Transport))
"""``protocol`` label values: how a request reached the server."""

OUTCOMES: frozenset[str] = frozenset({
    "ok", "invalid_input", "not_found", "unavailable", "timeout",
    "unauthenticated", "forbidden", "conflict", "internal",
})
"""``outcome`` label values: ``ok`` or an error kind."""

LATENCY_BUCKETS: tuple[float, ...] = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)
"""Seconds, 0.1 ms to 30 s in 1-2.5-5 steps: a cached answer to a request at its deadline."""

SIZE_BUCKETS: tuple[float, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
"""Rows or requests per model call."""

_MODEL_VERSION = ("model", "version")


class _Labels:
    """Keeps the first ``limit`` (model, version) pairs and model names as label values.

    Lookups of kept values take no lock (a dict read); only a first sighting does.
    Values past the bound are not remembered, so memory stays bounded too.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._pairs: dict[tuple[str, str], tuple[str, str]] = {}
        self._models: dict[str, str] = {}
        self._lock = threading.Lock()
        self._warned = False

    def pair(self, model: str, version: int | str) -> tuple[str, str]:
        key = (model, str(version))
        kept = self._pairs.get(key)
        if kept is not None:
            return kept
        with self._lock:
            if key in self._pairs:
                return self._pairs[key]
            if len(self._pairs) < self.limit and self._keep_model(model):
                self._pairs[key] = key
                return key
        self._overflow(f"{model}:{version}")
        return (OTHER, OTHER)

    def model(self, model: str) -> str:
        if model in self._models:
            return model
        with self._lock:
            if self._keep_model(model):
                return model
        self._overflow(model)
        return OTHER

    def _keep_model(self, model: str) -> bool:  # under the lock
        if model in self._models:
            return True
        if len(self._models) < self.limit:
            self._models[model] = model
            return True
        return False

    def _overflow(self, what: str) -> None:
        if not self._warned:
            self._warned = True
            logger.warning("metrics keep %d model versions as labels; %s and later ones are counted "
                           "as model=\"other\" (monitoring.metrics.max_models)", self.limit, what)


class _ObserverCounts:
    """Reads the observers' queue counters at scrape time (they live on ``Observers``)."""

    def __init__(self, observers: Observers) -> None:
        self.observers = observers

    def describe(self) -> Iterable[Metric]:
        return self.collect()

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily(
            "shipyard_observer_dropped_events", "Prediction events dropped because the observers' queue was full",
            value=self.observers.dropped,
        )
        yield CounterMetricFamily(
            "shipyard_observer_delivered_events", "Prediction events handed to the observers (metrics, log, drift)",
            value=self.observers.delivered,
        )


class _Included:
    """Another registry's series, collected into this one (the stream consumers')."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def describe(self) -> Iterable[Metric]:
        return self.registry.collect()  # their names, so a clash with ours is refused at include time

    def collect(self) -> Iterable[Metric]:
        return self.registry.collect()


class ServingMetrics:
    """The Prometheus series of one server, and their exposition.

    Args:
        config: ``monitoring.metrics``; with ``enabled`` false nothing is recorded
            and only included registries are exposed.
        clock: wall-clock seconds, for the start-time gauge.
    """

    def __init__(self, config: MetricsConfig | None = None, *, clock: Callable[[], float] = time.time) -> None:
        self.config = config or MetricsConfig()
        self.enabled = self.config.enabled
        self.registry = CollectorRegistry()
        self._labels = _Labels(self.config.max_models)

        mv = _MODEL_VERSION
        self.requests = Counter(
            "shipyard_requests", "Predictions answered, by outcome (ok or the error kind)",
            [*mv, "protocol", "outcome"], registry=None,
        )
        self.latency = Histogram(
            "shipyard_request_duration_seconds", "Time from taking a request to deciding its response, any outcome",
            [*mv, "protocol"], buckets=LATENCY_BUCKETS, registry=None,
        )
        self.rows = Counter(
            "shipyard_predicted_rows", "Rows of successful predictions (cache hits included)", mv, registry=None,
        )
        self.cache_hits = Counter(
            "shipyard_cache_hits", "Requests answered from the response cache", mv, registry=None,
        )
        self.batch_rows = Histogram(
            "shipyard_batch_size_rows", "Rows per model call of the batcher", mv, buckets=SIZE_BUCKETS, registry=None,
        )
        self.batch_requests = Histogram(
            "shipyard_batch_requests", "Requests merged into one model call by the batcher", mv,
            buckets=SIZE_BUCKETS, registry=None,
        )
        self.queue_time = Histogram(
            "shipyard_batch_queue_seconds", "Mean time the requests of a model call waited in the batcher's queue",
            mv, buckets=LATENCY_BUCKETS, registry=None,
        )
        self.batch_duration = Histogram(
            "shipyard_batch_duration_seconds", "Duration of the batcher's model calls", mv,
            buckets=LATENCY_BUCKETS, registry=None,
        )
        self.in_flight = Gauge(
            "shipyard_requests_in_flight", "Requests taken and not yet answered", ["model"], registry=None,
        )
        self.load_time = Gauge(
            "shipyard_model_load_duration_seconds", "How long the latest load of the model version took", mv,
            registry=None,
        )
        self.build_info = Gauge(
            "shipyard_build_info", "Always 1; the labels name the shipyard and Python versions",
            ["version", "python"], registry=None,
        )
        self.start_time = Gauge(
            "shipyard_start_time_seconds", "When the server's metrics started, in seconds since the epoch",
            registry=None,
        )
        if self.enabled:
            for collector in (self.requests, self.latency, self.rows, self.cache_hits, self.batch_rows,
                              self.batch_requests, self.queue_time, self.batch_duration, self.in_flight,
                              self.load_time, self.build_info, self.start_time):
                self.registry.register(collector)
            ProcessCollector(registry=self.registry)
            self.build_info.labels(__version__, platform.python_version()).set(1)
            self.start_time.set(clock())

        # children by label values; each cache is touched by one thread only (observers' or event loop's)
        self._event_children: dict[tuple[str, str, str], tuple[Histogram, Counter, Counter]] = {}
        self._request_children: dict[tuple[str, str, str, str], Counter] = {}
        self._batch_children: dict[tuple[str, str], tuple[Histogram, Histogram, Histogram, Histogram]] = {}
        self._in_flight_children: dict[str, Gauge] = {}

    # -- recording -----------------------------------------------------------------------------

    def observe(self, events: Sequence[PredictionEvent]) -> None:
        """Count ``events`` (``PredictionObserver``; runs on the observers' thread).

        Counters are added once per batch and label set (one locked add instead of one per
        event); only the latency histogram takes each event's value.
        """
        if not self.enabled:
            return
        requests: dict[tuple[str, str, str, str], int] = {}
        rows: dict[tuple[str, str, str], int] = {}
        cached: dict[tuple[str, str, str], int] = {}
        for event in events:
            model, version = self._labels.pair(event.model, event.version)
            protocol = event.context.transport if event.context.transport in PROTOCOLS else OTHER
            outcome = event.outcome if event.outcome in OUTCOMES else OTHER
            rkey = (model, version, protocol, outcome)
            requests[rkey] = requests.get(rkey, 0) + 1
            ekey = (model, version, protocol)
            self._children(ekey)[0].observe(event.latency_s)
            if outcome == "ok" and event.rows:
                rows[ekey] = rows.get(ekey, 0) + event.rows
            if event.cached:
                cached[ekey] = cached.get(ekey, 0) + 1
        for rkey, n in requests.items():
            counter = self._request_children.get(rkey)
            if counter is None:
                counter = self._request_children[rkey] = self.requests.labels(*rkey)
            counter.inc(n)
        for ekey, n in rows.items():
            self._children(ekey)[1].inc(n)
        for ekey, n in cached.items():
            self._children(ekey)[2].inc(n)

    def _children(self, ekey: tuple[str, str, str]) -> tuple[Histogram, Counter, Counter]:
        """The latency histogram, row and cache-hit counters of (model, version, protocol)."""
        children = self._event_children.get(ekey)
        if children is None:
            model, version, _ = ekey
            children = self._event_children[ekey] = (
                self.latency.labels(*ekey), self.rows.labels(model, version), self.cache_hits.labels(model, version),
            )
        return children

    def flush(self) -> None:
        """Nothing is buffered: every event is counted as it is observed."""

    def batch(self, model: str, version: int | str, size_rows: int, requests: int, queued_s: float,
              took_s: float) -> None:
        """Record one model call of the batcher (called on the event loop: a few dict reads and adds).

        Args:
            size_rows: rows of the merged call.
            requests: requests merged into it.
            queued_s: the requests' waits in the queue, summed (as the batcher reports them).
            took_s: the model call's duration.
        """
        if not self.enabled:
            return
        key = self._labels.pair(model, version)
        children = self._batch_children.get(key)
        if children is None:
            children = self._batch_children[key] = (
                self.batch_rows.labels(*key), self.batch_requests.labels(*key),
                self.queue_time.labels(*key), self.batch_duration.labels(*key),
            )
        rows, merged, queued, took = children
        rows.observe(size_rows)
        merged.observe(requests)
        queued.observe(queued_s / requests if requests > 0 else queued_s)
        took.observe(took_s)

    def inflight(self, model: str, delta: int) -> None:
        """Add ``delta`` (+1 when a request is taken, -1 when it is answered) to the model's in-flight gauge."""
        if not self.enabled:
            return
        label = self._labels.model(model)
        child = self._in_flight_children.get(label)
        if child is None:
            child = self._in_flight_children[label] = self.in_flight.labels(label)
        child.inc(delta)

    def model_loaded(self, model: str, version: int | str, seconds: float) -> None:
        """Record that loading ``model:version`` took ``seconds``."""
        if not self.enabled:
            return
        self.load_time.labels(*self._labels.pair(model, version)).set(seconds)

    # -- what else the exposition shows ----------------------------------------------------------------

    def watch(self, observers: Observers) -> None:
        """Expose ``observers``' dropped and delivered event counts (read at each scrape)."""
        if self.enabled:
            self.registry.register(_ObserverCounts(observers))

    def include(self, registry: CollectorRegistry) -> None:
        """Expose ``registry``'s series too (e.g. the asynchronous-request consumers' ``StreamMetrics``).

        A registry already ours (a ``StreamMetrics`` built on ``self.registry``) is left alone.
        """
        if registry is not self.registry:
            self.registry.register(_Included(registry))

    def render(self, accept: str | None = None) -> tuple[bytes, str]:
        """The exposition of every series, in the format ``accept`` asks for (Prometheus text by default).

        Args:
            accept: the scraper's ``Accept`` header; OpenMetrics when it asks for it, else the text format.

        Returns:
            The body and its content type.
        """
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type
