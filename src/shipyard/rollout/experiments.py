"""Experiments as people read them: the policies, their reports, and per-arm Prometheus series.

``Experiments`` reads the registry database (policies from ``TrafficStore``, counters
from ``arm_stats``) and hands them to the pure ``experiment_report``: the CLI's
``shipyard experiment report`` and the REST routes ``GET /v1/experiments[/{name}]`` both
go through it. ``ExperimentCollector`` shows a few numbers of every experiment on
``/metrics`` from a snapshot refreshed at most every ``refresh_seconds``, so scrapes
never make the database work harder than that.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric

from shipyard.errors import Kind, ShipyardError
from shipyard.registry.database import Database
from shipyard.rollout.arm_stats import first_window, read_totals
from shipyard.rollout.policy import STATES, TrafficPolicy, effective_weights
from shipyard.rollout.store import TrafficStore

if TYPE_CHECKING:  # the report and its statistics bring SciPy: imported when a report or an SRM is computed
    from shipyard.rollout.report import ExperimentReport

logger = logging.getLogger(__name__)

__all__ = ["ExperimentCollector", "ExperimentNotFound", "Experiments", "experiment_summary"]


class ExperimentNotFound(ShipyardError):
    """The model has no traffic policy, so there is no experiment to report on."""

    kind: ClassVar[Kind] = "not_found"

    def __init__(self, model: str) -> None:
        self.model = model
        super().__init__(f"{model} has no traffic policy (no split, canary or bandit): nothing to report")


def experiment_summary(policy: TrafficPolicy) -> dict[str, Any]:
    """A policy as ``GET /v1/experiments`` lists it."""
    return {
        "model": policy.model, "kind": policy.kind, "state": policy.state, "revision": policy.revision,
        "step": policy.step, "reason": policy.reason,
        "arms": [{"name": a.name, "target": a.target, "weight": a.weight, "role": a.role} for a in policy.arms],
    }


class Experiments:
    """Reads policies and per-arm counters from the registry database.

    Args:
        database: the registry database.
        clock: wall-clock seconds (the time the counters cover ends now).
    """

    def __init__(self, database: Database, *, clock: Callable[[], float] = time.time) -> None:
        self.database = database
        self.store = TrafficStore(database)
        self._clock = clock

    def policies(self) -> dict[str, TrafficPolicy]:
        return self.store.all()

    def summaries(self) -> list[dict[str, Any]]:
        """Every policy, sorted by model."""
        return [experiment_summary(p) for _, p in sorted(self.store.all().items())]

    def policy(self, model: str) -> TrafficPolicy:
        """The model's policy; ExperimentNotFound when it has none."""
        policy = self.store.get(model)
        if policy is None:
            raise ExperimentNotFound(model)
        return policy

    def report(self, model: str, *, since: float | None = None, alpha: float = 0.05) -> ExperimentReport:
        """The report of the model's current policy revision (counters of windows from ``since`` on).

        Raises:
            ExperimentNotFound: the model has no traffic policy.
        """
        policy = self.policy(model)
        totals = read_totals(self.database, model, policy.revision, since=since)
        start = first_window(self.database, model, policy.revision, since=since)
        elapsed = None if start is None else max(self._clock() - max(start, since or start), 0.0)
        from shipyard.rollout.report import experiment_report

        return experiment_report(policy, totals, alpha=alpha, elapsed_seconds=elapsed)


# -- Prometheus -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Snapshot:
    units: dict[tuple[str, str], float] = field(default_factory=dict)
    shares: dict[tuple[str, str], float] = field(default_factory=dict)
    srm: dict[str, float] = field(default_factory=dict)
    steps: dict[str, float] = field(default_factory=dict)
    states: dict[str, str] = field(default_factory=dict)


class ExperimentCollector:
    """Per-arm series of every experiment, from a snapshot at most ``refresh_seconds`` old.

    * ``shipyard_experiment_units{model,arm}``: requests of the arm at the policy's revision;
    * ``shipyard_experiment_share{model,arm}``: a primary arm's part of the primary requests;
    * ``shipyard_experiment_srm_p_value{model}``: the sample-ratio-mismatch p-value (absent when the
      revision puts every request on one arm);
    * ``shipyard_experiment_step{model}``: a canary's step (0 for other kinds);
    * ``shipyard_experiment_state{model,state}``: 1 for the policy's state, 0 for the others.

    A scrape that finds the snapshot stale refreshes it (reading the database once per
    policy); a failed refresh is logged and the previous snapshot is served.

    Args:
        experiments: where the numbers come from.
        refresh_seconds: the least time between two reads of the database.
        clock: monotonic seconds.
    """

    def __init__(self, experiments: Experiments, *, refresh_seconds: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.experiments = experiments
        self.refresh_seconds = refresh_seconds
        self._clock = clock
        self._snapshot = _Snapshot()
        self._taken: float | None = None
        self._lock = threading.Lock()
        self.refreshes = 0
        """Reads of the database so far."""

    def registry(self) -> CollectorRegistry:
        """A registry holding just this collector (``ServingMetrics.include`` it)."""
        registry = CollectorRegistry()
        registry.register(self)
        return registry

    def describe(self) -> Iterable[Metric]:
        return list(self._families(_Snapshot()))  # names only: registering reads no database

    def collect(self) -> Iterator[Metric]:
        return iter(self._families(self._current()))

    def _current(self) -> _Snapshot:
        with self._lock:
            now = self._clock()
            if self._taken is None or now - self._taken >= self.refresh_seconds:
                self._taken = now
                try:
                    self._snapshot = self._read()
                    self.refreshes += 1
                except Exception:
                    logger.exception("reading experiments for /metrics failed; serving the previous numbers")
            return self._snapshot

    def _read(self) -> _Snapshot:
        snap = _Snapshot()
        database = self.experiments.database
        for model, policy in sorted(self.experiments.policies().items()):
            totals = read_totals(database, model, policy.revision)
            primary_n = sum(totals[a.name].requests for a in policy.primaries if a.name in totals)
            for a in policy.arms:
                n = totals[a.name].requests if a.name in totals else 0
                snap.units[(model, a.name)] = n
                if a.role == "primary":
                    snap.shares[(model, a.name)] = n / primary_n if primary_n else 0.0
            weights = effective_weights(policy)
            names = [a.name for a in policy.primaries]
            if sum(1 for n in names if weights[n] > 0) >= 2:
                observed = [totals[n].requests if n in totals else 0 for n in names]
                from shipyard.rollout.report import SRM_ALPHA
                from shipyard.rollout.statistics import sample_ratio_mismatch

                snap.srm[model] = sample_ratio_mismatch(observed, [weights[n] for n in names], SRM_ALPHA).p_value
            snap.steps[model] = policy.step
            snap.states[model] = policy.state
        return snap

    @staticmethod
    def _families(snap: _Snapshot) -> list[Metric]:
        units = GaugeMetricFamily("shipyard_experiment_units", "Requests of the arm at the policy's current "
                                  "revision, fleet-wide", labels=["model", "arm"])
        shares = GaugeMetricFamily("shipyard_experiment_share", "The primary arm's part of the primary "
                                   "requests at the policy's current revision", labels=["model", "arm"])
        srm = GaugeMetricFamily("shipyard_experiment_srm_p_value", "Sample ratio mismatch p-value of the "
                                "primary arms against the planned weights (small: the split is off)",
                                labels=["model"])
        steps = GaugeMetricFamily("shipyard_experiment_step", "The canary's current step (0 for other kinds)",
                                  labels=["model"])
        states = GaugeMetricFamily("shipyard_experiment_state", "1 for the policy's current state",
                                   labels=["model", "state"])
        for (model, arm), value in snap.units.items():
            units.add_metric([model, arm], value)
        for (model, arm), value in snap.shares.items():
            shares.add_metric([model, arm], value)
        for model, value in snap.srm.items():
            srm.add_metric([model], value)
        for model, value in snap.steps.items():
            steps.add_metric([model], value)
        for model, state in snap.states.items():
            for s in STATES:
                states.add_metric([model, s], 1.0 if s == state else 0.0)
        return [units, shares, srm, steps, states]
