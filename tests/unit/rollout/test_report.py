"""Experiment reports: each number checked against SciPy/statsmodels on fixed data, false alarms by simulation.

Also the report's readers: ``Experiments`` on a registry database, the Prometheus collector's
cache, and ``shipyard experiment report``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from prometheus_client.exposition import generate_latest
from scipy import stats
from statsmodels.stats.power import NormalIndPower
from statsmodels.stats.proportion import proportion_effectsize, proportions_ztest
from tests.fixtures.arm_counts import make_events

from shipyard.cli.main import cli
from shipyard.config import Settings
from shipyard.registry import Registry
from shipyard.rollout.arm_stats import LATENCY_BOUNDS, ArmStatsRecorder, ArmTotals, add_rewards
from shipyard.rollout.experiments import ExperimentCollector, ExperimentNotFound, Experiments
from shipyard.rollout.policy import TrafficPolicy
from shipyard.rollout.report import experiment_report, planned_weights
from shipyard.rollout.store import TrafficStore

SPLIT = TrafficPolicy.from_dict({
    "model": "m",
    "arms": [{"name": "champion", "alias": "champion", "weight": 0.7},
             {"name": "challenger", "alias": "challenger", "weight": 0.3}],
    "shadow": [{"name": "next", "version": 3, "weight": 0.25}],
})
CANARY = TrafficPolicy.from_dict({
    "model": "m", "step": 1,
    "arms": [{"name": "stable", "alias": "prod"}, {"name": "candidate", "version": 4, "weight": 0}],
    "canary": {"stable": "stable", "candidate": "candidate", "steps": [0.05, 0.2, 1.0]},
})

TWO_ARMS = TrafficPolicy.from_dict({"model": "m", "arms": SPLIT.to_dict()["arms"][:2]})


def totals(arm: str, latencies: np.ndarray, errors: int, rewards: np.ndarray | None = None) -> ArmTotals:
    counts = np.bincount(np.searchsorted(LATENCY_BOUNDS, latencies, side="left"), minlength=len(LATENCY_BOUNDS))
    r = np.array([]) if rewards is None else rewards
    return ArmTotals(arm, 1, latencies.size, errors, float(latencies.sum()), float((latencies**2).sum()),
                     tuple(int(c) for c in counts), r.size, float(r.sum()), float((r**2).sum()))


@pytest.fixture(scope="module")
def fixed() -> dict[str, ArmTotals]:
    rng = np.random.default_rng(11)
    return {
        "champion": totals("champion", rng.lognormal(-4.0, 0.5, 7000), 70, rng.binomial(1, 0.30, 7000)),
        "challenger": totals("challenger", rng.lognormal(-3.9, 0.5, 3100), 52, rng.binomial(1, 0.33, 3100)),
        "next": totals("next", rng.lognormal(-4.0, 0.5, 2500), 20),
    }


def comparison(report, arm: str, metric: str):  # type: ignore[no-untyped-def]
    return next(c for c in report.comparisons if c.arm == arm and c.metric == metric)


def test_error_rate_lift_and_p_value_match_statsmodels(fixed: dict[str, ArmTotals]) -> None:
    report = experiment_report(SPLIT, fixed)
    c = comparison(report, "challenger", "error_rate")
    z, p = proportions_ztest([52, 70], [3100, 7000])  # pooled two-proportion z-test, treatment first
    assert c.p_value == pytest.approx(p, rel=1e-9)
    assert c.difference.value == pytest.approx(52 / 3100 - 70 / 7000)
    assert c.relative.value == pytest.approx((52 / 3100) / (70 / 7000) - 1)
    assert report.control == "champion"


def test_latency_and_reward_lifts_are_welch_tests_on_the_sums(fixed: dict[str, ArmTotals]) -> None:
    report = experiment_report(SPLIT, fixed)
    for metric, mean in (("latency", lambda t: t.latency), ("reward", lambda t: t.reward)):
        ctl, trt = mean(fixed["champion"]), mean(fixed["challenger"])
        want = stats.ttest_ind_from_stats(trt.mean, math.sqrt(trt.variance), trt.n, ctl.mean, math.sqrt(ctl.variance),
                                          ctl.n, equal_var=False)
        assert comparison(report, "challenger", metric).p_value == pytest.approx(want.pvalue, rel=1e-7), metric


def test_benjamini_hochberg_adjusts_every_comparison_of_the_report(fixed: dict[str, ArmTotals]) -> None:
    report = experiment_report(SPLIT, fixed)
    ps = np.array([c.p_value for c in report.comparisons])
    want = stats.false_discovery_control(ps, method="bh")
    assert [c.adjusted_p_value for c in report.comparisons] == pytest.approx(list(want))
    assert [c.significant for c in report.comparisons] == list(want <= 0.05)
    # the shadow arm is compared too (no reward: two metrics), the control never
    assert {(c.arm, c.metric) for c in report.comparisons} == {
        ("challenger", "error_rate"), ("challenger", "latency"), ("challenger", "reward"),
        ("next", "error_rate"), ("next", "latency")}


def test_always_valid_p_value_is_never_below_the_fixed_horizon_one_on_a_clear_effect(fixed) -> None:  # type: ignore[no-untyped-def]
    report = experiment_report(SPLIT, fixed)
    c = comparison(report, "challenger", "latency")
    assert c.p_value < 1e-6 and c.p_value <= c.sequential_p_value < 0.05
    assert c.sequence.lower <= c.difference.value <= c.sequence.upper
    assert c.sequence.upper - c.sequence.lower > c.difference.upper - c.difference.lower  # wider: valid at every look


def test_shares_and_srm_of_primary_arms_against_the_weights(fixed: dict[str, ArmTotals]) -> None:
    report = experiment_report(SPLIT, fixed)
    assert report.arm("champion").share == pytest.approx(7000 / 10100)
    assert report.arm("champion").planned_share == pytest.approx(0.7)
    assert report.arm("next").share == pytest.approx(2500 / 10100) and report.arm("next").planned_share == 0.25
    assert report.srm is not None and report.srm.arms == ("champion", "challenger")
    want = stats.chisquare([7000, 3100], f_exp=[0.7 * 10100, 0.3 * 10100])
    assert report.srm.p_value == pytest.approx(want.pvalue) and report.srm.mismatch == (want.pvalue < 0.001)


def test_a_canary_is_checked_against_its_steps_share_and_compared_with_its_stable_arm() -> None:
    rng = np.random.default_rng(3)
    observed = {"stable": totals("stable", rng.lognormal(-4, 0.5, 7600), 8),
                "candidate": totals("candidate", rng.lognormal(-4, 0.5, 2400), 3)}
    assert planned_weights(CANARY) == {"stable": pytest.approx(0.8), "candidate": pytest.approx(0.2)}
    report = experiment_report(CANARY, observed)
    assert report.control == "stable"
    want = stats.chisquare([7600, 2400], f_exp=[8000, 2000])
    assert report.srm is not None and report.srm.p_value == pytest.approx(want.pvalue) and report.srm.mismatch
    rolled_back = TrafficPolicy.from_dict({**CANARY.to_dict(), "state": "rolled_back"})
    assert experiment_report(rolled_back, observed).srm is None  # everything on one arm: nothing to check


def test_planning_matches_statsmodels_power_and_the_current_rate() -> None:
    rng = np.random.default_rng(4)
    observed = {"champion": totals("champion", rng.lognormal(-4, 0.5, 4000), 200),
                "challenger": totals("challenger", rng.lognormal(-4, 0.5, 1500), 80)}
    report = experiment_report(SPLIT, observed, elapsed_seconds=600.0, minimum_detectable_effect=0.2)
    (plan,) = [p for p in report.planning if p.metric == "error_rate"]
    baseline = 200 / 4000
    n = NormalIndPower().solve_power(proportion_effectsize(baseline * 1.2, baseline), alpha=0.05, power=0.8)
    assert plan.n_needed == math.ceil(n)
    assert plan.n_so_far == 1500
    assert plan.seconds_to_decision == pytest.approx((plan.n_needed - 1500) / (1500 / 600.0))
    achieved = NormalIndPower().power(proportion_effectsize(baseline * (1 + plan.detectable_lift), baseline),
                                      nobs1=1500, alpha=0.05)
    assert achieved == pytest.approx(0.8, abs=0.01)


@pytest.mark.slow
def test_a_and_a_experiments_are_flagged_at_most_alpha_of_the_time() -> None:
    """Two identical arms: BH across the report's metrics keeps the chance of any flag near alpha (global null)."""
    rng = np.random.default_rng(5)
    runs, flagged, srm = 300, 0, 0
    for _ in range(runs):
        n = rng.binomial(6000, 0.7)
        arms = {}
        for name, size in (("champion", n), ("challenger", 6000 - n)):
            arms[name] = totals(name, rng.lognormal(-4, 0.5, size), int(rng.binomial(size, 0.02)),
                                rng.binomial(1, 0.3, size))
        report = experiment_report(TWO_ARMS, arms)
        flagged += any(c.significant for c in report.comparisons)
        srm += bool(report.srm and report.srm.mismatch)
    rate = flagged / runs
    assert rate <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / runs), rate
    assert srm <= 3  # at alpha 0.001, 300 runs expect 0.3


def test_empty_arms_report_nulls_not_errors() -> None:
    report = experiment_report(SPLIT, {})
    data = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert data["arms"][0]["n"] == 0 and data["arms"][0]["share"] is None
    assert all(c["p_value"] is None for c in data["comparisons"])
    assert data["srm"]["p_value"] == 1.0


# -- reading from the registry database -----------------------------------------------------


@pytest.fixture
def stored(settings: Settings, registry: Registry) -> TrafficPolicy:
    policy = TrafficStore(registry.database).put(SPLIT, actor="test")
    rng = np.random.default_rng(6)
    recorder = ArmStatsRecorder(registry.database, reward_of=lambda m: "output:y")
    recorder.observe(make_events(rng, 600, revision=policy.revision, arms=("champion", "challenger", "next")))
    recorder.flush()
    return policy


def test_experiments_report_reads_the_current_revision(registry: Registry, stored: TrafficPolicy) -> None:
    experiments = Experiments(registry.database, clock=lambda: 1_700_000_000.0 + 900)
    report = experiments.report("m")
    assert report.revision == stored.revision
    assert sum(a.n for a in report.arms) == 540  # every tenth event had no revision
    assert report.elapsed_seconds is not None and 900 <= report.elapsed_seconds <= 960
    assert [s["model"] for s in experiments.summaries()] == ["m"]
    with pytest.raises(ExperimentNotFound):
        experiments.report("other")


def test_collector_reads_the_database_at_most_every_refresh_seconds(registry: Registry, stored: TrafficPolicy) -> None:
    now = [0.0]
    collector = ExperimentCollector(Experiments(registry.database), refresh_seconds=5.0, clock=lambda: now[0])
    exposition = collector.registry()
    assert collector.refreshes == 0  # registering reads nothing
    first = generate_latest(exposition).decode()
    add_rewards(registry.database, "m", stored.revision, "champion", 1, 1, 1.0, 1.0, 1_700_000_000.0)
    TrafficStore(registry.database).put(TrafficPolicy.from_dict({**SPLIT.to_dict(), "state": "paused"}))
    now[0] = 4.9
    assert generate_latest(exposition).decode() == first and collector.refreshes == 1
    now[0] = 5.0
    second = generate_latest(exposition).decode()
    assert collector.refreshes == 2
    assert 'shipyard_experiment_state{model="m",state="running"} 1.0' in first
    assert 'shipyard_experiment_state{model="m",state="paused"} 1.0' in second
    assert 'shipyard_experiment_units{arm="champion",model="m"}' in first
    assert 'shipyard_experiment_srm_p_value{model="m"}' in first and 'shipyard_experiment_step{model="m"} 0.0' in first
    assert 'shipyard_experiment_share{arm="next"' not in first  # shadow arms have no share of the split


def test_cli_report_prints_json_and_a_table(settings: Settings, stored: TrafficPolicy) -> None:
    home = ["--home", str(settings.home)]
    result = CliRunner().invoke(cli, [*home, "experiment", "report", "m", "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["model"] == "m" and {a["arm"] for a in data["arms"]} == {"champion", "challenger", "next"}
    table = CliRunner().invoke(cli, [*home, "experiment", "report", "m"], catch_exceptions=False)
    assert table.exit_code == 0 and "sample ratio: p = " in table.stdout
    assert "champion" in table.stdout and "control" in table.stdout and "against champion" in table.stdout
    listing = CliRunner().invoke(cli, [*home, "experiment", "list"], catch_exceptions=False)
    assert listing.exit_code == 0 and "challenger=0.3" in listing.stdout


def test_cli_report_of_a_model_without_a_policy_exits_1(settings: Settings, registry: Registry) -> None:
    result = CliRunner().invoke(cli, ["--home", str(Path(settings.home)), "experiment", "report", "nope"],
                                catch_exceptions=False)
    assert result.exit_code == 1 and "nope has no traffic policy" in result.stderr and result.stdout == ""


def test_regret_is_reported_from_the_arms_rewards() -> None:
    from shipyard.rollout.arm_stats import ArmTotals
    from shipyard.rollout.policy import TrafficPolicy
    from shipyard.rollout.report import experiment_report

    policy = TrafficPolicy.from_dict({"model": "m", "arms": ["a", "b"], "bandit": {}, "reward": "output:y"})
    totals = {"a": ArmTotals("a", 1, requests=100, reward_n=100, reward_sum=10.0, reward_sumsq=10.0),
              "b": ArmTotals("b", 2, requests=300, reward_n=300, reward_sum=60.0, reward_sumsq=60.0)}
    report = experiment_report(policy, totals)
    # best observed mean 0.2 (b) over 400 rewards, 70 earned: 400 * 0.2 - 70
    assert report.regret == pytest.approx(10.0)
    assert experiment_report(policy, {"a": ArmTotals("a", 1, requests=5)}).regret is None
