"""Drift inside the server: binned windows per version and arm, summed across replicas, compared with the profile.

Three parts, each on its own thread of control:

* ``DriftRecorder`` is a ``PredictionObserver``. It queues every answered prediction's
  inputs and outputs for the ``Window`` of its (model, version, arm, period), where a
  period is ``window_seconds`` of wall-clock time, and bins the queue in bulk (binning a
  thousand one-row predictions at once costs a small part of binning them one by one).
  A window holds counts per bin, never rows, and the queue is bounded, so memory does not
  grow with traffic. Versions registered without a reference profile are not binned.
* ``DriftMonitor`` is a server service. Every ``interval`` seconds it writes this replica's
  windows to ``shipyard_drift_windows`` (one row per replica and window, replaced each
  time: the window is cumulative), and, on the one replica holding the ``drift-monitor``
  lease, compares every closed period: it sums the replicas' windows of that period
  (``Window.merge``), runs ``detector.compare`` against the version's profile, and records
  the report in ``shipyard_drift_results`` (unique per window, so a hand-over between
  replicas never records one twice).
* ``DriftCollector`` shows the latest report of each version and arm on ``/metrics``
  (``shipyard_drift_score``, ``shipyard_drift_share``, ``shipyard_drift_rows``,
  ``shipyard_data_quality_rows``), read from the database at most every few seconds, so
  every replica shows the fleet's numbers.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio.to_thread
import sqlalchemy as sa
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric

from shipyard._periodic import every
from shipyard.config import DriftConfig
from shipyard.monitoring.events import Arrays, PredictionEvent
from shipyard.monitoring.tables import drift_results_t, drift_windows_t
from shipyard.registry.database import Database

if TYPE_CHECKING:
    from shipyard.monitoring.drift.detector import DriftReport, DriftSettings
    from shipyard.monitoring.drift.null_cache import NullThresholdCache
    from shipyard.monitoring.drift.profile import Profile
    from shipyard.monitoring.drift.window import Window
    from shipyard.rollout.store import TrafficStore

logger = logging.getLogger(__name__)

__all__ = ["DriftCollector", "DriftMonitor", "DriftRecorder", "drift_settings", "latest_results"]

Key = tuple[str, int, str, int]
"""(model, version, arm, period start in epoch seconds)."""

LEASE = "drift-monitor"
MAX_PENDING_ROWS = 4096
"""Predictions queued for binning at most; more are binned at once on the observers' thread."""
GRACE_SECONDS = 2.0
"""A period is compared this long after it ends, so every replica has written its last counts."""
KEEP_WINDOWS_SECONDS = 24 * 3600.0
"""Replicas' window rows are deleted this long after their period (the reports are kept)."""


def drift_settings(config: DriftConfig) -> DriftSettings:
    """The detector's settings from the ``monitoring.drift`` config."""
    from shipyard.monitoring.drift.detector import DriftSettings

    return DriftSettings(tests=dict(config.tests), thresholds=dict(config.thresholds),
                         false_alarms=config.false_alarms, min_rows=config.min_rows, min_effect=config.min_effect,
                         drift_share=config.drift_share, multivariate=config.multivariate)


def period_start(at: float, window_seconds: float) -> int:
    """The start (epoch seconds) of the period ``at`` falls in."""
    return int(at // window_seconds * window_seconds)


class DriftRecorder:
    """Bins predictions into per-(model, version, arm, period) windows, off the request path.

    Args:
        profiles: the reference profile of (model, version), or None when it has none
            (looked up once per version, on the observers' thread).
        window_seconds: the length of a period.
    """

    def __init__(self, profiles: Callable[[str, int], Profile | None], *, window_seconds: float) -> None:
        self._profiles = profiles
        self.window_seconds = window_seconds
        self._known: dict[tuple[str, int], Profile | None] = {}
        self._windows: dict[Key, Window] = {}
        self._pending: dict[Key, list[tuple[Arrays, Arrays | None]]] = defaultdict(list)
        self._pending_rows = 0
        self._dirty: set[Key] = set()
        self._lock = threading.RLock()
        self.binned = 0
        """Rows binned so far (predictions of versions that have a profile)."""
        # profile() is called under the lock too: a version's first event reads its profile once

    def profile(self, model: str, version: int) -> Profile | None:
        key = (model, version)
        if key not in self._known:
            try:
                self._known[key] = self._profiles(model, version)
            except Exception:
                logger.exception("the reference profile of %s:%d cannot be read; its drift is not monitored",
                                 model, version)
                self._known[key] = None
            if self._known[key] is None:
                logger.info("%s:%d has no reference profile: its drift is not monitored", model, version)
        return self._known[key]

    def observe(self, events: Sequence[PredictionEvent]) -> None:
        """Queue the answered predictions of profiled versions; they are binned in bulk (``bin_pending``)."""
        pending = 0
        with self._lock:
            for event in events:
                if event.outcome != "ok" or event.inputs is None or event.rows <= 0:
                    continue
                if self.profile(event.model, event.version) is None:
                    continue
                key = (event.model, event.version, event.route, period_start(event.started_at, self.window_seconds))
                self._pending[key].append((event.inputs, event.outputs))
                self._pending_rows += event.rows
            pending = self._pending_rows
        if pending >= MAX_PENDING_ROWS:
            self.bin_pending()

    def bin_pending(self) -> None:
        """Bin the queued predictions into their windows.

        Binning costs a fixed part per call and feature plus a small part per row, so
        predictions are queued as they come (one-row requests, mostly) and binned many
        at a time: when the monitor takes the windows, or once ``MAX_PENDING_ROWS`` wait.
        """
        from shipyard.monitoring.drift.window import Window

        with self._lock:
            for key, batch in self._pending.items():
                window = self._windows.get(key)
                if window is None:
                    profile = self._known[(key[0], key[1])]
                    assert profile is not None
                    window = self._windows[key] = Window(profile)
                window.add_many(batch)
                self._dirty.add(key)
            self.binned += self._pending_rows
            self._pending.clear()
            self._pending_rows = 0

    def flush(self) -> None:
        """Nothing to do here: the monitor writes the windows out (and once more when it stops)."""

    def take_changed(self, now: float) -> list[tuple[Key, int, dict[str, Any]]]:
        """The windows that changed since the last call, as (key, rows, payload); forgets closed ones."""
        self.bin_pending()
        with self._lock:
            changed = [(key, self._windows[key].rows, self._windows[key].to_dict()) for key in sorted(self._dirty)]
            self._dirty.clear()
            for key in [k for k in self._windows if k[3] + self.window_seconds + GRACE_SECONDS < now]:
                del self._windows[key]  # its period is over and its last counts were just taken
        return changed


@dataclass
class DriftMonitor:
    """Writes this replica's windows and, holding the lease, compares every closed period (a server service).

    Args:
        database: the registry database.
        recorder: this replica's windows.
        profiles: the reference profile of (model, version).
        config: ``monitoring.drift``.
        leases: where the ``drift-monitor`` lease is taken (``TrafficStore``).
        replica: this process's name in the windows table and the lease.
        interval: seconds between two ticks (default: a fifth of the window, 0.5 to 5 s).
        clock: wall-clock seconds.
        thresholds: where null thresholds are kept across restarts (the home's cache folder).
    """

    database: Database
    recorder: DriftRecorder
    profiles: Callable[[str, int], Profile | None]
    config: DriftConfig
    leases: TrafficStore
    replica: str
    interval: float | None = None
    clock: Callable[[], float] = time.time
    thresholds: NullThresholdCache | None = None
    name: str = "drift monitor"
    compared: int = 0
    """Windows compared by this replica."""
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None

    def __post_init__(self) -> None:
        if self.interval is None:
            self.interval = min(5.0, max(0.5, self.config.window_seconds / 5))

    async def start(self) -> None:
        assert self.interval is not None
        self._task = asyncio.get_running_loop().create_task(
            every(self.interval, self._stop, self._tick, "the drift monitor", logger), name=self.name)

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task
        try:
            await anyio.to_thread.run_sync(self.write_windows)  # the last counts of this replica
        except Exception:
            logger.exception("the drift monitor could not write its last windows")
        await anyio.to_thread.run_sync(self.leases.release, LEASE, self.replica)

    async def _tick(self) -> None:
        await anyio.to_thread.run_sync(self.tick)

    def tick(self) -> None:
        """Write this replica's windows; compare the closed periods when this replica holds the lease."""
        assert self.interval is not None
        self.write_windows()
        if self.leases.acquire(LEASE, self.replica, max(3 * self.interval, 10.0)):
            self.compare_closed()

    def write_windows(self) -> int:
        """Write the windows that changed since the last write; how many were written."""
        now = self.clock()
        changed = self.recorder.take_changed(now)
        if not changed:
            return 0
        with self.database.transaction() as conn:
            for (model, version, arm, start), rows, payload in changed:
                where = sa.and_(drift_windows_t.c.model == model, drift_windows_t.c.version == version,
                                drift_windows_t.c.arm == arm, drift_windows_t.c.start == start,
                                drift_windows_t.c.replica == self.replica)
                values = {"rows": rows, "payload": payload, "updated_at": now}
                if conn.execute(drift_windows_t.update().where(where).values(**values)).rowcount == 0:
                    conn.execute(drift_windows_t.insert().values(model=model, version=version, arm=arm, start=start,
                                                                 replica=self.replica, **values))
        return len(changed)

    def compare_closed(self) -> list[DriftReport]:
        """Compare every period that ended at least ``GRACE_SECONDS`` ago and has no report yet."""
        from shipyard.monitoring.drift.window import Window

        now = self.clock()
        closed_before = now - self.config.window_seconds - GRACE_SECONDS
        w, r = drift_windows_t.c, drift_results_t.c
        reported = sa.exists().where(r.model == w.model, r.version == w.version, r.arm == w.arm, r.start == w.start)
        with self.database.connect() as conn:
            keys = conn.execute(sa.select(w.model, w.version, w.arm, w.start).distinct()
                                .where(w.start <= closed_before, ~reported)
                                .order_by(w.start, w.model, w.version, w.arm)).all()
        reports = []
        settings = drift_settings(self.config)
        for model, version, arm, start in keys:
            profile = self.profiles(model, version)
            if profile is None:
                continue
            with self.database.connect() as conn:
                payloads = conn.execute(sa.select(w.payload).where(w.model == model, w.version == version,
                                                                   w.arm == arm, w.start == start)
                                        .order_by(w.replica)).scalars().all()
            window = Window.from_dict(profile, payloads[0])
            for payload in payloads[1:]:
                window = window.merge(Window.from_dict(profile, payload))
            report = self._compare(profile, window, settings)
            self._record(model, version, arm, start, report)
            reports.append(report)
            if report.drifted:
                drifted = [f.feature for f in report.features if f.drifted]
                logger.warning("%s:%d (%s) drifted in the window from %s: %s", model, version, arm,
                               time.strftime("%H:%M:%S", time.gmtime(start)), ", ".join(drifted))
        with self.database.transaction() as conn:
            conn.execute(drift_windows_t.delete().where(w.start < now - KEEP_WINDOWS_SECONDS))
        return reports

    def _compare(self, profile: Profile, window: Window, settings: DriftSettings) -> DriftReport:
        from shipyard.monitoring.drift.detector import compare

        self.compared += 1
        return compare(profile, window, settings, thresholds=self.thresholds)

    def _record(self, model: str, version: int, arm: str, start: int, report: DriftReport) -> None:
        try:
            with self.database.transaction() as conn:
                conn.execute(drift_results_t.insert().values(
                    model=model, version=version, arm=arm, start=start,
                    end=int(start + self.config.window_seconds), rows=report.rows, drifted=report.drifted,
                    share=report.share, payload=report.to_dict(), at=self.clock()))
        except sa.exc.IntegrityError:
            logger.debug("the window of %s:%d (%s) at %d was reported already", model, version, arm, start)


def latest_results(database: Database, *, model: str | None = None, limit_per_arm: int = 1) -> list[dict[str, Any]]:
    """The newest ``limit_per_arm`` drift reports of each (model, version, arm), newest first, as stored rows.

    Reads only those rows (a window function ranks each arm's reports), so it costs the same
    after a year of windows as after an hour.
    """
    r = drift_results_t.c
    rank = sa.func.row_number().over(partition_by=(r.model, r.version, r.arm), order_by=r.start.desc())
    ranked = sa.select(drift_results_t, rank.label("rank"))
    if model is not None:
        ranked = ranked.where(r.model == model)
    sub = ranked.subquery()
    query = (sa.select(*[sub.c[c.name] for c in drift_results_t.columns])
             .where(sub.c.rank <= limit_per_arm).order_by(sub.c.start.desc(), sub.c.model, sub.c.version, sub.c.arm))
    with database.connect() as conn:
        return [dict(row) for row in conn.execute(query).mappings()]


class DriftCollector:
    """The latest drift report of every version and arm on ``/metrics``, read at most every ``refresh_seconds``.

    * ``shipyard_drift_score{model,version,arm,feature}``: the feature's effect size in the
      latest compared window (Wasserstein distance in reference standard deviations for
      numbers, Jensen-Shannon distance for categories, or the selected test's statistic);
      outputs appear as features too, multivariate checks as ``pca_reconstruction`` and ``mmd``;
    * ``shipyard_drift_detected{model,version,arm,feature}``: 1 when that feature drifted;
    * ``shipyard_drift_share{model,version,arm}``: the share of input features that drifted;
    * ``shipyard_drift_rows{model,version,arm}``: rows in that window;
    * ``shipyard_data_quality_rows{model,version,arm,feature,kind}``: rows with nulls,
      out-of-range values, unseen categories or type failures in that window.
    """

    def __init__(self, database: Database, *, refresh_seconds: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.database = database
        self.refresh_seconds = refresh_seconds
        self._clock = clock
        self._rows: list[dict[str, Any]] = []
        self._taken: float | None = None
        self._lock = threading.Lock()

    def registry(self) -> CollectorRegistry:
        registry = CollectorRegistry()
        registry.register(self)
        return registry

    def describe(self) -> Iterable[Metric]:
        return self._families([])

    def collect(self) -> Iterator[Metric]:
        return iter(self._families(self._current()))

    def _current(self) -> list[dict[str, Any]]:
        with self._lock:
            now = self._clock()
            if self._taken is None or now - self._taken >= self.refresh_seconds:
                try:
                    self._rows = latest_results(self.database)
                except Exception:
                    logger.exception("could not read the drift reports; /metrics shows the previous ones")
                self._taken = now
            return self._rows

    @staticmethod
    def _families(rows: list[dict[str, Any]]) -> list[Metric]:
        score = GaugeMetricFamily("shipyard_drift_score", "Effect size of a feature's drift in the latest window",
                                  labels=["model", "version", "arm", "feature"])
        detected = GaugeMetricFamily("shipyard_drift_detected", "1 when the feature drifted in the latest window",
                                     labels=["model", "version", "arm", "feature"])
        share = GaugeMetricFamily("shipyard_drift_share", "Share of input features that drifted in the latest window",
                                  labels=["model", "version", "arm"])
        counted = GaugeMetricFamily("shipyard_drift_rows", "Rows in the latest compared window",
                                    labels=["model", "version", "arm"])
        quality = GaugeMetricFamily("shipyard_data_quality_rows", "Rows with a data-quality problem in the latest "
                                    "window", labels=["model", "version", "arm", "feature", "kind"])
        for row in rows:
            labels = [row["model"], str(row["version"]), row["arm"]]
            share.add_metric(labels, float(row["share"]))
            counted.add_metric(labels, float(row["rows"]))
            payload = row["payload"] or {}
            for group in ("features", "outputs", "multivariate"):
                for f in payload.get(group) or ():
                    if f.get("skipped"):
                        continue
                    score.add_metric([*labels, f["feature"]], float(f["effect"]))
                    detected.add_metric([*labels, f["feature"]], 1.0 if f["drifted"] else 0.0)
                    for kind, n in (f.get("quality") or {}).items():
                        quality.add_metric([*labels, f["feature"], kind], float(n))
        return [score, detected, share, counted, quality]
