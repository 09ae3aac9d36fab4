"""Per-arm counters: what a recorder counts, how quantiles come out of the buckets, exact sums on SQLite.

The same concurrency and retry checks run on PostgreSQL in tests/integration/test_arm_stats_postgres.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from tests.fixtures.arm_counts import (
    CALLER_SIDE,
    SERVER_SIDE,
    START,
    assert_totals_equal,
    check_concurrent_recorders_sum_exactly,
    check_failed_flush_is_retried,
    expected_totals,
    make_events,
)

from shipyard.context import RequestContext
from shipyard.monitoring.events import PredictionEvent
from shipyard.registry.database import Database
from shipyard.rollout.arm_stats import (
    LATENCY_BOUNDS,
    ArmStatsRecorder,
    ArmTotals,
    add_rewards,
    first_window,
    read_totals,
)


@pytest.fixture
def database(tmp_path: Path) -> Iterator[Database]:
    db = Database(f"sqlite:///{tmp_path / 'registry.db'}")
    try:
        yield db
    finally:
        db.close()


def event(arm: str, outcome: str = "ok", *, at: float = START, latency: float = 0.01, revision: int | None = 1,
          outputs: dict[str, np.ndarray] | None = None, shadow: bool = False) -> PredictionEvent:
    return PredictionEvent(RequestContext.new("rest", "r"), "m", 1, arm, None, outputs, at, latency, outcome,
                           shadow=shadow, revision=revision)


def bucketed(latencies: np.ndarray) -> ArmTotals:
    counts = np.bincount(np.searchsorted(LATENCY_BOUNDS, latencies, side="left"), minlength=len(LATENCY_BOUNDS))
    return ArmTotals("a", requests=latencies.size, latency_buckets=tuple(int(c) for c in counts))


def test_latency_bounds_rise_from_half_a_millisecond_to_30_seconds_then_infinity() -> None:
    bounds = np.array(LATENCY_BOUNDS)
    assert bounds[0] == 0.0005 and bounds[-2] == 30.0 and np.isinf(bounds[-1])
    assert 35 <= bounds.size <= 60 and np.all(np.diff(bounds) > 0)
    assert np.max(bounds[1:-1] / bounds[:-2]) < 1.3  # a bucket is at most 30 % wide


def test_quantiles_from_buckets_fall_in_the_true_quantiles_bucket_and_near_it() -> None:
    rng = np.random.default_rng(1)
    latencies = rng.lognormal(np.log(0.02), 0.8, 200_000)
    totals = bucketed(latencies)
    for q in (0.5, 0.9, 0.99, 0.999):
        true = float(np.quantile(latencies, q, method="inverted_cdf"))
        got = totals.latency_quantile(q)
        i = int(np.searchsorted(LATENCY_BOUNDS, true, side="left"))
        assert LATENCY_BOUNDS[i - 1] <= got <= LATENCY_BOUNDS[i], q
        assert abs(got / true - 1) < 0.03, (q, got, true)  # interpolation inside the bucket does far better


def test_quantile_edges_empty_first_bucket_and_past_the_last_bound() -> None:
    assert np.isnan(ArmTotals("a").latency_quantile(0.99))
    slow = bucketed(np.array([0.010, 0.011, 45.0, 60.0]))
    assert slow.latency_quantile(0.99) == 30.0  # in the +inf bucket: the last finite bound
    assert 0.0094 <= slow.latency_quantile(0.0) <= 0.010  # the lower edge of the first occupied bucket
    with pytest.raises(ValueError):
        slow.latency_quantile(1.5)


def test_totals_add_field_by_field_and_refuse_another_arm() -> None:
    rng = np.random.default_rng(2)
    events = make_events(rng, 400, arms=("a",))
    half = len(events) // 2
    first, second = expected_totals(events[:half])["a"], expected_totals(events[half:])["a"]
    assert_totals_equal({"a": first + second}, expected_totals(events))
    whole = first + second
    assert whole.error_rate == whole.errors / whole.requests
    assert whole.mean_latency == whole.latency_sum / whole.requests
    assert whole.reward.n == whole.reward_n
    with pytest.raises(ValueError, match="arm"):
        first + ArmTotals("b")


def test_only_server_side_failures_count_as_errors(database: Database) -> None:
    recorder = ArmStatsRecorder(database)
    kinds = [*SERVER_SIDE, *CALLER_SIDE, "ok", "ok"]
    recorder.observe([event("a", k) for k in kinds])
    recorder.flush()
    totals = read_totals(database, "m", 1)["a"]
    assert (totals.requests, totals.errors) == (len(kinds), len(SERVER_SIDE))


def test_recorder_skips_unrouted_events_counts_shadows_by_arm_and_rewards_successes(database: Database) -> None:
    y = {"y": np.array([1.0, 0.0, 0.5])}
    recorder = ArmStatsRecorder(database, reward_of=lambda m: "output:y" if m == "m" else None)
    recorder.observe([
        event("a", outputs=y), event("a", outputs={"y": np.array([2.0])}), event("a", "internal", outputs=None),
        event("a", revision=None, outputs=y),  # no policy: not an arm's
        event("s", outputs=y, shadow=True),
        event("a", outputs={"other": np.array([9.0])}),  # no reward output: a request, no reward
    ])
    recorder.flush()
    totals = read_totals(database, "m", 1)
    assert totals["a"].requests == 4 and totals["s"].requests == 1
    assert (totals["a"].reward_n, totals["a"].reward_sum, totals["a"].reward_sumsq) == (2, 2.5, 4.25)


def test_rewards_are_recorded_only_for_an_output_reward(database: Database) -> None:
    recorder = ArmStatsRecorder(database, reward_of=lambda m: "feedback")
    recorder.observe([event("a", outputs={"y": np.array([1.0])})])
    recorder.flush()
    assert read_totals(database, "m", 1)["a"].reward_n == 0


def test_recorder_writes_at_most_every_flush_seconds(database: Database) -> None:
    now = [START]
    recorder = ArmStatsRecorder(database, flush_seconds=1.0, clock=lambda: now[0])
    recorder.observe([event("a")])
    now[0] += 0.5
    recorder.observe([event("a")])
    assert recorder.flushes == 0 and read_totals(database, "m", 1) == {}
    now[0] += 0.6
    recorder.observe([event("a")])
    assert recorder.flushes == 1 and read_totals(database, "m", 1)["a"].requests == 3


def test_windows_follow_event_time_and_since_selects_them(database: Database) -> None:
    recorder = ArmStatsRecorder(database, window_seconds=60)
    recorder.observe([event("a", at=START + t) for t in (0, 30, 70, 130, 190)])
    recorder.flush()
    window = int(START // 60) * 60
    assert first_window(database, "m", 1) == window
    assert read_totals(database, "m", 1)["a"].requests == 5
    assert read_totals(database, "m", 1, since=window + 60)["a"].requests == 3
    assert read_totals(database, "m", 2) == {}


def test_add_rewards_adds_to_an_arms_counters(database: Database) -> None:
    add_rewards(database, "m", 1, "a", 3, 10, 4.0, 4.0, START)
    add_rewards(database, "m", 1, "a", 3, 5, 1.0, 1.0, START + 1)
    totals = read_totals(database, "m", 1)["a"]
    assert (totals.requests, totals.version, totals.reward_n, totals.reward_sum) == (0, 3, 15, 5.0)


def test_two_recorders_on_one_sqlite_database_sum_exactly(database: Database) -> None:
    check_concurrent_recorders_sum_exactly(database)


def test_a_failed_flush_on_sqlite_is_retried_without_loss_or_double_count(
    database: Database, caplog: pytest.LogCaptureFixture
) -> None:
    check_failed_flush_is_retried(database, caplog)
