"""The server's Prometheus series: requests, latency, batches, in-flight requests, model loads.

``ServingMetrics`` owns one ``CollectorRegistry`` per server (never the process-wide
default, so two servers in one process keep their counts apart) and is a
``PredictionObserver``: the data plane's events reach it in batches on the
observers' thread. What no event carries comes through cheap methods the serving
core calls directly: ``batch`` (the batcher, once per model call), ``inflight``
(the request path), ``model_loaded`` (the repository).

With ``shipyard serve --workers N`` (N > 1) every worker is a whole server
process with its own ``ServingMetrics``; the supervisor (``serving/supervisor.py``)
gives them one throwaway folder (``PROMETHEUS_MULTIPROC_DIR``) and prometheus_client's
multiprocess mode writes every counter, histogram and gauge there. A scrape reaches
one worker, which sums the folder (``MultiProcessCollector``): counters and
histograms over every worker that ever ran (a replaced one's counts stay),
``shipyard_requests_in_flight`` over the live ones. The collectors that read the
registry database (experiments, drift, alerts, realized metrics) are read once, by
the answering worker; ``process_*`` series are left out then (they would describe
one worker only). One process (``--workers 1``) keeps plain in-memory values.

Label values are bounded so that a server cannot grow its series without limit:

* at most ``MetricsConfig.max_models`` distinct (model, version) pairs are kept
  as labels, in the order they are first seen; later ones are recorded under
  ``model="other", version="other"`` (and ``model="other"`` for per-model series);
* ``protocol`` is one of ``PROTOCOLS`` and ``outcome`` one of ``OUTCOMES``;
  anything else is recorded as ``other``.
"""

from __future__ import annotations

import logging
import os
import platform
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import get_args

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.multiprocess import MultiProcessCollector

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
            "shipyard_observer_dropped_events", _DROPPED_HELP, value=self.observers.dropped,
        )
        yield CounterMetricFamily(
            "shipyard_observer_delivered_events", _DELIVERED_HELP, value=self.observers.delivered,
        )


class _SharedObserverCounts:
    """The observers' queue counters as counters of the shared folder (workers' counts add up).

    ``Observers`` keeps plain integers; ``sync`` adds what they grew by since the last call
    (on each batch the metrics observe, and at each scrape of this worker).
    """

    def __init__(self, observers: Observers, registry: CollectorRegistry) -> None:
        self.observers = observers
        self.dropped = Counter("shipyard_observer_dropped_events", _DROPPED_HELP, registry=registry)
        self.delivered = Counter("shipyard_observer_delivered_events", _DELIVERED_HELP, registry=registry)
        self._seen = (0, 0)
        self._lock = threading.Lock()

    def sync(self) -> None:
        with self._lock:
            dropped, delivered = self.observers.dropped, self.observers.delivered
            if dropped > self._seen[0]:
                self.dropped.inc(dropped - self._seen[0])
            if delivered > self._seen[1]:
                self.delivered.inc(delivered - self._seen[1])
            self._seen = (dropped, delivered)


_DROPPED_HELP = "Prediction events dropped because the observers' queue was full"
_DELIVERED_HELP = "Prediction events handed to the observers (metrics, log, drift)"


class _Included:
    """Another registry's series, collected into this one (the stream consumers')."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def describe(self) -> Iterable[Metric]:
        return self.registry.collect()  # their names, so a clash with ours is refused at include time

    def collect(self) -> Iterable[Metric]:
        return self.registry.collect()


class _AllWorkers:
    """The exposition of a worker of ``--workers N``: the shared folder summed, then what only this worker reads.

    Value-backed series (ours, and those of included registries such as the asynchronous
    consumers' ``StreamMetrics``) are in the folder, so the local copy of a family the
    folder has is skipped; families the folder lacks come from this worker (the collectors
    that read the database at scrape time, and empty families that nothing recorded yet).
    """

    def __init__(self, folder: str, local: CollectorRegistry, before_scrape: Callable[[], None]) -> None:
        self.shared = CollectorRegistry()
        MultiProcessCollector(self.shared, path=folder)  # type: ignore[no-untyped-call]
        self.local = local
        self.before_scrape = before_scrape

    def collect(self) -> Iterator[Metric]:
        self.before_scrape()
        seen = set()
        for family in self.shared.collect():
            seen.add(family.name)
            yield family
        for family in self.local.collect():
            if family.name not in seen:
                yield family


class ServingMetrics:
    """The Prometheus series of one server, and their exposition.

    Args:
        config: ``monitoring.metrics``; with ``enabled`` false nothing is recorded
            and only included registries are exposed.
        clock: wall-clock seconds, for the start-time gauge.
        multiprocess_dir: the folder the workers of ``--workers N`` share (prometheus_client's
            multiprocess mode, which ``PROMETHEUS_MULTIPROC_DIR`` turned on before prometheus_client
            was imported); None: one process, in-memory values.
    """

    def __init__(self, config: MetricsConfig | None = None, *, clock: Callable[[], float] = time.time,
                 multiprocess_dir: str | os.PathLike[str] | None = None) -> None:
        self.config = config or MetricsConfig()
        self.enabled = self.config.enabled
        self.registry = CollectorRegistry()
        self._labels = _Labels(self.config.max_models)
        self.multiprocess_dir = os.fspath(multiprocess_dir) if multiprocess_dir is not None else None
        if self.multiprocess_dir is not None and not _multiprocess_values():
            raise RuntimeError("shared metrics need PROMETHEUS_MULTIPROC_DIR set before prometheus_client is "
                               "imported (the supervisor of --workers N sets it for its workers)")
        self._shared_counts: _SharedObserverCounts | None = None

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
        # how each gauge adds up over the workers of --workers N (ignored by one process)
        self.in_flight = Gauge(
            "shipyard_requests_in_flight", "Requests taken and not yet answered", ["model"], registry=None,
            multiprocess_mode="livesum",
        )
        self.load_time = Gauge(
            "shipyard_model_load_duration_seconds", "How long the latest load of the model version took", mv,
            registry=None, multiprocess_mode="mostrecent",
        )
        self.step_latency = Histogram(
            "shipyard_graph_step_duration_seconds", "Duration of each step of an inference graph, any outcome",
            ["graph", "step"], buckets=LATENCY_BUCKETS, registry=None,
        )
        self.step_errors = Counter(
            "shipyard_graph_step_errors", "Failed calls of each step of an inference graph (skipped ones included)",
            ["graph", "step"], registry=None,
        )
        self.build_info = Gauge(
            "shipyard_build_info", "Always 1; the labels name the shipyard and Python versions",
            ["version", "python"], registry=None, multiprocess_mode="max",
        )
        self.start_time = Gauge(
            "shipyard_start_time_seconds", "When the server's metrics started, in seconds since the epoch",
            registry=None, multiprocess_mode="min",
        )
        if self.enabled:
            for collector in (self.requests, self.latency, self.rows, self.cache_hits, self.batch_rows,
                              self.batch_requests, self.queue_time, self.batch_duration, self.in_flight,
                              self.load_time, self.step_latency, self.step_errors, self.build_info,
                              self.start_time):
                self.registry.register(collector)
            if self.multiprocess_dir is None:  # a worker's own process series would pass for the server's
                ProcessCollector(registry=self.registry)
            self.build_info.labels(__version__, platform.python_version()).set(1)
            self.start_time.set(clock())

        # children by label values; each cache is touched by one thread only (observers' or event loop's)
        self._event_children: dict[tuple[str, str, str], tuple[Histogram, Counter, Counter]] = {}
        self._request_children: dict[tuple[str, str, str, str], Counter] = {}
        self._batch_children: dict[tuple[str, str], tuple[Histogram, Histogram, Histogram, Histogram]] = {}
        self._in_flight_children: dict[str, Gauge] = {}
        self._step_children: dict[tuple[str, str], tuple[Histogram, Counter]] = {}
        self._exposed = self.registry
        if self.multiprocess_dir is not None:
            self._exposed = CollectorRegistry(auto_describe=False)
            self._exposed.register(_AllWorkers(self.multiprocess_dir, self.registry, self._sync))

    # -- recording -----------------------------------------------------------------------------

    def observe(self, events: Sequence[PredictionEvent]) -> None:
        """Count ``events`` (``PredictionObserver``; runs on the observers' thread).

        Counters are added once per batch and label set (one locked add instead of one per
        event); only the latency histogram takes each event's value.
        """
        if not self.enabled:
            return
        if self._shared_counts is not None:
            self._shared_counts.sync()
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

    def graph_step(self, graph: str, step: str, seconds: float, ok: bool) -> None:
        """Record one call of step ``step`` of graph ``graph`` (on the event loop). Step names are
        bounded by the graph's definition; graph names like model names (``max_models``)."""
        if not self.enabled:
            return
        key = (self._labels.model(graph), step)
        children = self._step_children.get(key)
        if children is None:
            children = self._step_children[key] = (self.step_latency.labels(*key), self.step_errors.labels(*key))
        children[0].observe(seconds)
        if not ok:
            children[1].inc()

    def model_loaded(self, model: str, version: int | str, seconds: float) -> None:
        """Record that loading ``model:version`` took ``seconds``."""
        if not self.enabled:
            return
        self.load_time.labels(*self._labels.pair(model, version)).set(seconds)

    # -- what else the exposition shows ----------------------------------------------------------------

    def watch(self, observers: Observers) -> None:
        """Expose ``observers``' dropped and delivered event counts (read at each scrape)."""
        if not self.enabled:
            return
        if self.multiprocess_dir is None:
            self.registry.register(_ObserverCounts(observers))
        else:
            self._shared_counts = _SharedObserverCounts(observers, self.registry)

    def _sync(self) -> None:
        if self._shared_counts is not None:
            self._shared_counts.sync()

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
        return encoder(self._exposed), content_type


def _multiprocess_values() -> bool:
    """Whether prometheus_client writes values to the shared folder (chosen when it was imported)."""
    from prometheus_client import values

    return values.ValueClass is not values.MutexValue
