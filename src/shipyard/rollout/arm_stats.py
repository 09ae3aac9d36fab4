"""Fleet-wide per-arm counters: what every replica adds to, and what gates and reports read.

Each replica's ``ArmStatsRecorder`` sees the prediction events of traffic policies
(those whose ``revision`` is set; shadow copies too, under their arm's name) and
counts them in memory per (model, policy revision, arm, time window). At most every
``flush_seconds`` it adds those increments to ``shipyard_arm_stats`` and
``shipyard_arm_latency`` (migration 0003) with one upsert per row
(``INSERT ... ON CONFLICT DO UPDATE SET requests = requests + excluded.requests``), all
in one transaction. Increments commute, so any number of replicas can add to the same
rows and the totals are exact sums; rows are written in key order so that two
PostgreSQL writers lock them in the same order and cannot deadlock.

A flush that fails rolls back whole, so its increments are kept and added to the next
try: nothing is lost and nothing is counted twice. (The one case no counter can tell
apart is a commit that succeeded on the server while the connection broke before the
reply; that flush is retried and counted twice.)

Counters, not samples, are what the fleet shares: counts, sums and sums of squares
make means and variances (``statistics.Mean.from_sums``); latencies also go to fixed
buckets (``LATENCY_BOUNDS``) from which quantiles are read. ``read_totals`` sums the
windows of one policy revision into an ``ArmTotals`` per arm.
"""

from __future__ import annotations

import bisect
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import sqlalchemy as sa

from shipyard.monitoring.events import PredictionEvent
from shipyard.protocol.status import STATUSES
from shipyard.registry.database import Database
from shipyard.rollout.tables import arm_latency_t, arm_stats_t

if TYPE_CHECKING:  # statistics brings SciPy: a server records counters without it
    from shipyard.rollout.statistics import Mean, Proportion

logger = logging.getLogger(__name__)

__all__ = ["LATENCY_BOUNDS", "ArmStatsRecorder", "ArmTotals", "add_rewards", "first_window", "read_totals"]

LATENCY_BOUNDS: tuple[float, ...] = (
    *(float(f"{b:.3g}") for b in np.geomspace(0.0005, 30.0, 49)),
    math.inf,
)
"""Upper bounds (seconds) of the latency buckets: 0.5 ms to 30 s, log-spaced about 26 % apart, then +inf.

A quantile read from them is off by at most one bucket's width, and interpolation inside
the bucket usually does much better: fine enough to compare two arms' p99.
"""

_STAT_COLUMNS = ("requests", "errors", "latency_sum", "latency_sumsq", "reward_n", "reward_sum", "reward_sumsq")
_ZEROS: tuple[int, ...] = (0,) * len(LATENCY_BOUNDS)


def is_server_error(outcome: str) -> bool:
    """Whether an event's outcome is the server's failure (HTTP status >= 500), not the caller's bad input."""
    if outcome == "ok":
        return False
    status = STATUSES.get(outcome)
    return status is None or status.http >= 500  # an unknown kind is treated as internal


def latency_bucket(seconds: float) -> int:
    """The index of the bucket a latency falls in: the first bound at or above it."""
    return bisect.bisect_left(LATENCY_BOUNDS, seconds)


@dataclass(frozen=True)
class ArmTotals:
    """One arm's counters, summed over some windows (and replicas)."""

    arm: str
    version: int = 0
    """The version the arm served (the latest seen, should its alias move within a revision)."""
    requests: int = 0
    errors: int = 0
    """Requests that failed on the server's side (HTTP status >= 500)."""
    latency_sum: float = 0.0
    latency_sumsq: float = 0.0
    latency_buckets: tuple[int, ...] = _ZEROS
    """Requests per bucket of ``LATENCY_BOUNDS``."""
    reward_n: int = 0
    reward_sum: float = 0.0
    reward_sumsq: float = 0.0

    def __post_init__(self) -> None:
        if len(self.latency_buckets) != len(LATENCY_BOUNDS):
            raise ValueError(f"latency_buckets needs {len(LATENCY_BOUNDS)} counts, got {len(self.latency_buckets)}")

    def __add__(self, other: ArmTotals) -> ArmTotals:
        if not isinstance(other, ArmTotals):
            return NotImplemented
        if other.arm != self.arm:
            raise ValueError(f"cannot add the totals of arm {other.arm!r} to arm {self.arm!r}")
        return ArmTotals(
            self.arm, max(self.version, other.version), self.requests + other.requests, self.errors + other.errors,
            self.latency_sum + other.latency_sum, self.latency_sumsq + other.latency_sumsq,
            tuple(a + b for a, b in zip(self.latency_buckets, other.latency_buckets, strict=True)),
            self.reward_n + other.reward_n, self.reward_sum + other.reward_sum,
            self.reward_sumsq + other.reward_sumsq,
        )

    @property
    def error_rate(self) -> float:
        """Errors per request (NaN before the first request)."""
        return self.errors / self.requests if self.requests else math.nan

    @property
    def mean_latency(self) -> float:
        """Mean seconds per request (NaN before the first request)."""
        return self.latency_sum / self.requests if self.requests else math.nan

    @property
    def error_proportion(self) -> Proportion:
        from shipyard.rollout.statistics import Proportion

        return Proportion(self.errors, self.requests)

    @property
    def latency(self) -> Mean:
        from shipyard.rollout.statistics import Mean

        return Mean.from_sums(self.requests, self.latency_sum, self.latency_sumsq)

    @property
    def reward(self) -> Mean:
        from shipyard.rollout.statistics import Mean

        return Mean.from_sums(self.reward_n, self.reward_sum, self.reward_sumsq)

    def latency_quantile(self, q: float) -> float:
        """The ``q`` quantile of latency, interpolated linearly inside its bucket (NaN with no requests).

        The rank ``q * n`` is located in the cumulative bucket counts; the first bucket starts at 0
        and a rank in the last (+inf) bucket reads as the last finite bound.
        """
        if not 0 <= q <= 1:
            raise ValueError(f"q must be in [0, 1], got {q}")
        counts = np.asarray(self.latency_buckets, dtype=float)
        total = counts.sum()
        if total == 0:
            return math.nan
        cumulative = np.cumsum(counts)
        rank = q * total
        # the first bucket whose cumulative count reaches the rank (rank 0: the first non-empty one)
        i = int(np.flatnonzero(counts)[0]) if rank == 0 else int(np.searchsorted(cumulative, rank, side="left"))
        i = min(i, len(counts) - 1)
        lower = LATENCY_BOUNDS[i - 1] if i > 0 else 0.0
        upper = LATENCY_BOUNDS[i]
        if math.isinf(upper):
            return lower
        before = cumulative[i] - counts[i]
        return float(lower + (upper - lower) * (rank - before) / counts[i])


# -- recording ------------------------------------------------------------------------------


@dataclass
class _Increment:
    """What one (model, revision, arm, window) got since the last flush."""

    version: int
    requests: int = 0
    errors: int = 0
    latency_sum: float = 0.0
    latency_sumsq: float = 0.0
    reward_n: int = 0
    reward_sum: float = 0.0
    reward_sumsq: float = 0.0
    buckets: dict[int, int] = field(default_factory=dict)

    def merge(self, other: _Increment) -> None:
        self.version = max(self.version, other.version)
        for column in _STAT_COLUMNS:
            setattr(self, column, getattr(self, column) + getattr(other, column))
        for bucket, count in other.buckets.items():
            self.buckets[bucket] = self.buckets.get(bucket, 0) + count


_Key = tuple[str, int, str, int]  # model, revision, arm, window


class ArmStatsRecorder:
    """A ``PredictionObserver`` adding the per-arm counts of policy-routed predictions to the database.

    Args:
        database: the registry database (migration 0003 made the tables).
        window_seconds: width of the time windows counts are kept per (by the event's start time).
        flush_seconds: the least time between two writes; events in between are added up in memory.
        reward_of: ``reward_of(model)`` names the reward of a model's arms: ``output:NAME`` makes the mean
            of that output per successful request the reward (bandits rewarded by the prediction itself);
            None (or any other form) records no reward here.
        clock: wall-clock seconds, for the flush cadence.
    """

    def __init__(
        self,
        database: Database,
        *,
        window_seconds: int = 60,
        flush_seconds: float = 1.0,
        reward_of: Callable[[str], str | None] = lambda model: None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if window_seconds < 1:
            raise ValueError(f"window_seconds must be at least 1, got {window_seconds}")
        self.database = database
        self.window_seconds = int(window_seconds)
        self.flush_seconds = flush_seconds
        self.reward_of = reward_of
        self._clock = clock
        self._pending: dict[_Key, _Increment] = {}
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._last_flush = clock()
        self._failing = False
        self.flushes = 0
        """Successful writes, for tests and diagnostics."""

    def observe(self, events: Sequence[PredictionEvent]) -> None:
        """Count the events routed by a traffic policy; write when ``flush_seconds`` have passed."""
        rewards: dict[str, str | None] = {}
        with self._lock:
            for event in events:
                if event.revision is None:
                    continue
                if event.model not in rewards:
                    rewards[event.model] = _output_name(self.reward_of(event.model))
                self._add(event, rewards[event.model])
        if self._clock() - self._last_flush >= self.flush_seconds:
            self.flush()

    def _add(self, event: PredictionEvent, reward_output: str | None) -> None:
        window = int(event.started_at // self.window_seconds) * self.window_seconds
        key = (event.model, int(event.revision or 0), event.route, window)
        inc = self._pending.get(key)
        if inc is None:
            inc = self._pending[key] = _Increment(event.version)
        inc.version = max(inc.version, event.version)
        inc.requests += 1
        inc.errors += is_server_error(event.outcome)
        latency = float(event.latency_s)
        inc.latency_sum += latency
        inc.latency_sumsq += latency * latency
        bucket = latency_bucket(latency)
        inc.buckets[bucket] = inc.buckets.get(bucket, 0) + 1
        if reward_output is not None and event.outcome == "ok" and event.outputs is not None:
            value = _reward_value(event.outputs.get(reward_output))
            if value is not None:
                inc.reward_n += 1
                inc.reward_sum += value
                inc.reward_sumsq += value * value

    def flush(self) -> None:
        """Add what was counted since the last write to the tables; on failure keep it for the next try."""
        with self._flush_lock:  # one write at a time, so a retry never races a newer flush
            self._last_flush = self._clock()
            with self._lock:
                pending, self._pending = self._pending, {}
            if not pending:
                return
            try:
                _write(self.database, pending)
            except Exception:
                with self._lock:  # put them back under what arrived meanwhile: added once, on a later try
                    for key, inc in pending.items():
                        current = self._pending.get(key)
                        if current is None:
                            self._pending[key] = inc
                        else:
                            inc.merge(current)
                            self._pending[key] = inc
                if not self._failing:
                    self._failing = True
                    logger.exception("writing per-arm counters failed; keeping them and trying again")
                return
            self.flushes += 1
            if self._failing:
                self._failing = False
                logger.info("per-arm counters written again")

    @property
    def pending(self) -> int:
        """Rows counted in memory and not yet written."""
        return len(self._pending)


def _output_name(reward: str | None) -> str | None:
    if reward is not None and reward.startswith("output:") and len(reward) > len("output:"):
        return reward[len("output:"):]
    return None


def _reward_value(array: Any) -> float | None:
    """The mean of an output as one request's reward; None when it is missing, empty or not a finite number."""
    if array is None:
        return None
    try:
        values = np.asarray(array, dtype=float)
    except (TypeError, ValueError):
        return None
    if values.size == 0:
        return None
    value = float(values.mean())
    return value if math.isfinite(value) else None


def _adding(database: Database, table: sa.Table, keys: Iterable[str], added: Iterable[str],
            highest: Iterable[str] = ()) -> Any:
    """``INSERT ... ON CONFLICT (keys) DO UPDATE SET col = col + excluded.col`` for the ``added`` columns.

    The ``highest`` columns keep the larger of the stored and the new value.
    """
    if database.dialect == "sqlite":  # each dialect imported when used (PostgreSQL's costs a SQLite server 40 ms)
        from sqlalchemy.dialects import sqlite

        stmt: Any = sqlite.insert(table)
        larger: Any = sa.func.max  # SQLite's two-argument max() is a scalar function
    elif database.dialect == "postgresql":
        from sqlalchemy.dialects import postgresql

        stmt = postgresql.insert(table)
        larger = sa.func.greatest
    else:
        raise NotImplementedError(f"per-arm counters need SQLite or PostgreSQL, not {database.dialect}")
    set_: dict[str, Any] = {c: table.c[c] + stmt.excluded[c] for c in added}
    set_.update({c: larger(table.c[c], stmt.excluded[c]) for c in highest})
    return stmt.on_conflict_do_update(index_elements=list(keys), set_=set_)


_KEYS = ("model", "revision", "arm", "window")


def _write(database: Database, pending: Mapping[_Key, _Increment]) -> None:
    stats, latency = [], []
    for key in sorted(pending):  # one lock order for every writer: no deadlock between replicas
        inc = pending[key]
        ids = dict(zip(_KEYS, key, strict=True))
        stats.append({**ids, "version": inc.version, **{c: getattr(inc, c) for c in _STAT_COLUMNS}})
        latency += [{**ids, "bucket": b, "count": n} for b, n in sorted(inc.buckets.items())]
    with database.transaction() as conn:
        conn.execute(_adding(database, arm_stats_t, _KEYS, _STAT_COLUMNS, ("version",)), stats)
        if latency:
            conn.execute(_adding(database, arm_latency_t, (*_KEYS, "bucket"), ("count",)), latency)


def add_rewards(database: Database, model: str, revision: int, arm: str, version: int, n: int, total: float,
                total_of_squares: float, at: float, *, window_seconds: int = 60) -> None:
    """Add ``n`` rewards (their sum and sum of squares) to an arm's counters, in the window of ``at``.

    The feedback path uses it: rewards that arrive after the prediction (a click, a label).
    """
    window = int(at // window_seconds) * window_seconds
    row = {"model": model, "revision": revision, "arm": arm, "window": window, "version": version,
           "requests": 0, "errors": 0, "latency_sum": 0.0, "latency_sumsq": 0.0,
           "reward_n": n, "reward_sum": float(total), "reward_sumsq": float(total_of_squares)}
    with database.transaction() as conn:
        conn.execute(_adding(database, arm_stats_t, _KEYS, _STAT_COLUMNS, ("version",)), [row])


# -- reading ------------------------------------------------------------------------------------


def _where(table: sa.Table, model: str, revision: int, since: float | None) -> list[Any]:
    clauses = [table.c.model == model, table.c.revision == revision]
    if since is not None:
        clauses.append(table.c.window >= math.floor(since))
    return clauses


def read_totals(database: Database, model: str, revision: int, *, since: float | None = None) -> dict[str, ArmTotals]:
    """Every arm's counters for one policy revision, summed over its windows (and every replica).

    Args:
        since: only windows that start at or after this time (epoch seconds); None: all of them.

    Returns:
        ``{arm: ArmTotals}`` for the arms that have counts.
    """
    s, lat = arm_stats_t, arm_latency_t
    with database.connect() as conn:
        rows = conn.execute(
            sa.select(s.c.arm, sa.func.max(s.c.version), *(sa.func.sum(s.c[c]) for c in _STAT_COLUMNS))
            .where(*_where(s, model, revision, since)).group_by(s.c.arm)
        ).all()
        buckets = conn.execute(
            sa.select(lat.c.arm, lat.c.bucket, sa.func.sum(lat.c.count))
            .where(*_where(lat, model, revision, since)).group_by(lat.c.arm, lat.c.bucket)
        ).all()
    counts: dict[str, list[int]] = {}
    for arm, bucket, count in buckets:
        if 0 <= bucket < len(LATENCY_BOUNDS):
            counts.setdefault(arm, list(_ZEROS))[bucket] += int(count)
    out = {}
    for arm, version, requests, errors, lsum, lsq, rn, rsum, rsq in rows:
        out[arm] = ArmTotals(
            arm, int(version), int(requests), int(errors), float(lsum), float(lsq),
            tuple(counts.get(arm, _ZEROS)), int(rn), float(rsum), float(rsq),
        )
    return out


def first_window(database: Database, model: str, revision: int, *, since: float | None = None) -> int | None:
    """The start (epoch seconds) of the earliest window with counts for this revision; None without any."""
    s = arm_stats_t
    with database.connect() as conn:
        value = conn.execute(sa.select(sa.func.min(s.c.window)).where(*_where(s, model, revision, since))).scalar()
    return None if value is None else int(value)
