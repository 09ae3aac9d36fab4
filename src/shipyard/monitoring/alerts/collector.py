"""``shipyard_drift_alert{model,rule}``: 1 while an incident of the rule is firing for the model, else 0.

Read from the incidents table (every replica shows the fleet's alerts, not only the lease
holder's), at most once per ``refresh_seconds``; a failed read is logged and the previous
numbers are served. A rule and model appear once they had an incident.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric

from shipyard.monitoring.alerts.store import AlertStore

__all__ = ["AlertCollector"]

logger = logging.getLogger(__name__)


class AlertCollector:
    """A Prometheus collector of the alert gauge (``ServingMetrics.include(collector.registry())``).

    Args:
        store: where the incidents are.
        refresh_seconds: the least time between two reads of the database.
        clock: monotonic seconds.
    """

    def __init__(self, store: AlertStore, *, refresh_seconds: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.refresh_seconds = refresh_seconds
        self._clock = clock
        self._states: dict[tuple[str, str], bool] = {}
        self._taken: float | None = None
        self._lock = threading.Lock()
        self.refreshes = 0
        """Reads of the database so far."""

    def registry(self) -> CollectorRegistry:
        """A registry holding just this collector."""
        registry = CollectorRegistry()
        registry.register(self)
        return registry

    def describe(self) -> Iterable[Metric]:
        return [self._family({})]  # the name only: registering reads no database

    def collect(self) -> Iterator[Metric]:
        return iter([self._family(self._current())])

    def _current(self) -> dict[tuple[str, str], bool]:
        with self._lock:
            now = self._clock()
            if self._taken is None or now - self._taken >= self.refresh_seconds:
                self._taken = now
                try:
                    self._states = self.store.states()
                    self.refreshes += 1
                except Exception:
                    logger.exception("reading alerts for /metrics failed; serving the previous numbers")
            return self._states

    @staticmethod
    def _family(states: dict[tuple[str, str], bool]) -> GaugeMetricFamily:
        family = GaugeMetricFamily("shipyard_drift_alert", "1 while an alert rule is firing for the model, else 0",
                                   labels=["model", "rule"])
        for (rule, model), firing in sorted(states.items()):
            family.add_metric([model, rule], 1.0 if firing else 0.0)
        return family
