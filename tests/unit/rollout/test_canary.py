"""The canary's next step from its gates, on simulated per-arm totals.

Totals are drawn with NumPy the way the fleet's counters would hold them: binomial
errors and rewards, log-normal latencies put into ``LATENCY_BOUNDS`` buckets. Where a
claim is a rate (a gate's wrong pass or wrong fail over all the looks of a step), it is
checked by simulation against its bound plus three binomial standard errors.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from scipy import stats

from shipyard.errors import ConfigError
from shipyard.rollout.arm_stats import LATENCY_BOUNDS, ArmTotals
from shipyard.rollout.canary import CanaryGates, canary_gates, next_canary_step, slower_than
from shipyard.rollout.policy import TrafficPolicy

STEPS = (0.01, 0.05, 0.2, 0.5, 1.0)
MEDIAN, SIGMA = 0.040, 0.5  # log-normal latency: 40 ms median, p99 about 128 ms


def canary(step: int = 0, gates: dict[str, Any] | None = None, **plan: Any) -> TrafficPolicy:
    return TrafficPolicy.from_dict({
        "model": "iris", "step": step,
        "arms": [{"alias": "champion"}, {"alias": "challenger", "weight": 0}],
        "canary": {"stable": "champion", "candidate": "challenger", "steps": list(STEPS), "interval_seconds": 300,
                   "gates": gates or {}, **plan},
    })


def bucket_probabilities(median: float, sigma: float = SIGMA) -> np.ndarray:
    """The chance of each latency bucket under a log-normal latency."""
    cdf = stats.lognorm(sigma, scale=median).cdf(np.asarray(LATENCY_BOUNDS))
    return np.diff(np.concatenate(([0.0], cdf)))


def totals(arm: str, rng: np.random.Generator, n: int, error_rate: float, median: float = MEDIAN,
           reward_rate: float | None = None) -> ArmTotals:
    """One arm's counters after ``n`` simulated requests."""
    buckets = rng.multinomial(n, bucket_probabilities(median))
    rewards = 0 if reward_rate is None else int(rng.binomial(n, reward_rate))
    return ArmTotals(arm, requests=n, errors=int(rng.binomial(n, error_rate)), latency_buckets=tuple(int(b) for b in
                     buckets), reward_n=0 if reward_rate is None else n, reward_sum=rewards, reward_sumsq=rewards)


def arms(rng: np.random.Generator, n_stable: int, n_candidate: int, stable_errors: float = 0.005,
         candidate_errors: float = 0.005, candidate_median: float = MEDIAN, **kw: Any) -> dict[str, ArmTotals]:
    stable_reward = kw.pop("stable_reward", None)
    candidate_reward = kw.pop("candidate_reward", None)
    return {"champion": totals("champion", rng, n_stable, stable_errors, reward_rate=stable_reward),
            "challenger": totals("challenger", rng, n_candidate, candidate_errors, candidate_median,
                                 reward_rate=candidate_reward)}


def verdicts(decision: Any) -> dict[str, str]:
    return {g.gate: g.verdict for g in decision.gates}


# -- settings --------------------------------------------------------------------------------


def test_gate_settings_have_documented_defaults_and_refuse_unknown_names() -> None:
    assert canary_gates({}) == CanaryGates(min_units=200, max_error_rate_increase=0.01, max_latency_increase=0.2)
    assert canary_gates({"min_units": "500", "reward_relative": True}).min_units == 500
    with pytest.raises(ConfigError, match="max_error_rate"):
        canary_gates({"max_error_rate": 0.02})
    with pytest.raises(ConfigError, match="alpha"):
        canary_gates({"alpha": 1.5})
    with pytest.raises(ConfigError, match="reward_relative"):
        canary_gates({"reward_relative": "yes"})


# -- the decision ---------------------------------------------------------------------------


def test_a_much_worse_error_rate_rolls_back_at_once_without_waiting_for_the_interval() -> None:
    rng = np.random.default_rng(1)
    step_totals = arms(rng, 59_400, 600, candidate_errors=0.05)
    decision = next_canary_step(canary(), step_totals, step_started_at=0.0, now=60.0)
    assert decision.action == "rollback"
    assert verdicts(decision)["error_rate"] == "fail"
    assert verdicts(decision)["interval"] == "waiting"
    assert "error_rate fail" in decision.reason
    paused = next_canary_step(canary(on_failure="pause"), step_totals, 0.0, 60.0)
    assert paused.action == "pause"


def test_a_good_candidate_waits_for_the_interval_then_advances_and_promotes_at_the_last_step() -> None:
    rng = np.random.default_rng(2)
    step_totals = arms(rng, 198_000, 2_000)  # step 1: 1 %
    early = next_canary_step(canary(), step_totals, step_started_at=1000.0, now=1200.0)
    assert early.action == "hold" and verdicts(early)["interval"] == "waiting"
    assert verdicts(early)["error_rate"] == "pass" and verdicts(early)["latency"] == "pass"
    assert next_canary_step(canary(), step_totals, 1000.0, 1300.0).action == "advance"
    half = arms(rng, 20_000, 20_000)  # step 4: 50 %
    assert next_canary_step(canary(step=3), half, 1000.0, 1300.0).action == "advance"
    # the last step (1.0) leaves the stable arm nothing: the previous step's stable totals stand in
    last = {"challenger": totals("challenger", rng, 20_000, 0.005)}
    assert verdicts(next_canary_step(canary(step=4), last, 1000.0, 1300.0))["units"] == "waiting"
    promoted = next_canary_step(canary(step=4), last, 1000.0, 1300.0, baseline=half["champion"])
    assert promoted.action == "promote", promoted.reason


def test_too_few_candidate_units_hold_the_step() -> None:
    rng = np.random.default_rng(3)
    decision = next_canary_step(canary(gates={"min_units": 1000}), arms(rng, 89_100, 900), 0.0, 10_000.0)
    assert decision.action == "hold"
    units = next(g for g in decision.gates if g.gate == "units")
    assert units.verdict == "waiting" and units.values["candidate"] == 900


def test_gate_results_carry_the_observed_rates() -> None:
    rng = np.random.default_rng(4)
    step_totals = arms(rng, 495_000, 5_000, candidate_errors=0.02)
    gate = next(g for g in next_canary_step(canary(), step_totals, 0.0, 1.0).gates if g.gate == "error_rate")
    s, c = step_totals["champion"], step_totals["challenger"]
    assert gate.values["stable"] == s.errors / s.requests and gate.values["candidate"] == c.errors / c.requests
    assert gate.values["lower"] < gate.values["difference"] < gate.values["upper"]
    assert "error_rate" in str(gate) and "%" in gate.detail


def test_an_undecided_step_holds_past_max_step_seconds_and_says_so_in_a_stable_note() -> None:
    rng = np.random.default_rng(5)
    # a candidate exactly at the margin: the error gate cannot decide soon
    step_totals = arms(rng, 29_700, 300, candidate_errors=0.015)
    within = next_canary_step(canary(gates={"max_step_seconds": 3600}), step_totals, 0.0, 1000.0)
    assert within.action == "hold" and within.note == "" and verdicts(within)["error_rate"] == "undecided"
    late = next_canary_step(canary(gates={"max_step_seconds": 3600}), step_totals, 0.0, 4000.0)
    later = next_canary_step(canary(gates={"max_step_seconds": 3600}), step_totals, 0.0, 5000.0)
    assert late.action == later.action == "hold"
    assert "max_step_seconds" in late.note and late.note == later.note  # the controller records it once


def test_a_split_off_its_weights_pauses_the_canary_whatever_on_failure_says() -> None:
    rng = np.random.default_rng(6)
    step_totals = arms(rng, 18_600, 1_400)  # step 2 sends 5 %, the counters saw 7 %
    decision = next_canary_step(canary(step=1), step_totals, 0.0, 400.0)
    expected_p = stats.chisquare([18_600, 1_400], [19_000, 1_000]).pvalue
    split = next(g for g in decision.gates if g.gate == "split")
    assert split.values["p_value"] == pytest.approx(expected_p)
    assert decision.action == "pause" and "cannot be compared" in decision.reason
    sticky = TrafficPolicy.from_dict({**canary(step=1).to_dict(), "sticky": "header:x-user"})
    assert verdicts(next_canary_step(sticky, step_totals, 0.0, 400.0))["split"] == "skipped"


def test_a_paused_canary_holds() -> None:
    decision = next_canary_step(TrafficPolicy.from_dict({**canary().to_dict(), "state": "paused"}), {}, 0.0, 1e6)
    assert decision.action == "hold" and decision.gates == ()


# -- the latency gate -----------------------------------------------------------------------


def test_slower_than_reads_the_buckets_to_within_the_bucket_holding_the_threshold() -> None:
    rng = np.random.default_rng(7)
    latency = rng.lognormal(math.log(MEDIAN), SIGMA, 50_000)
    index = np.searchsorted(LATENCY_BOUNDS, latency, side="left")
    buckets = np.bincount(index, minlength=len(LATENCY_BOUNDS))
    arm = ArmTotals("a", requests=latency.size, latency_buckets=tuple(int(b) for b in buckets))
    for threshold in (0.01, 0.05, 0.1234, 0.2):
        exact = int((latency > threshold).sum())
        holding = buckets[np.searchsorted(LATENCY_BOUNDS, threshold, side="left")]
        assert abs(slower_than(arm, threshold) - exact) <= holding
        assert abs(slower_than(arm, threshold) - exact) < 0.02 * latency.size


def test_latency_gate_passes_an_equally_fast_candidate_and_fails_one_whose_p99_is_50_percent_higher() -> None:
    rng = np.random.default_rng(8)
    same = next_canary_step(canary(step=1), arms(rng, 95_000, 5_000), 0.0, 1.0)
    slow = next_canary_step(canary(step=1), arms(rng, 95_000, 5_000, candidate_median=1.5 * MEDIAN), 0.0, 1.0)
    assert verdicts(same)["latency"] == "pass"
    gate = next(g for g in slow.gates if g.gate == "latency")
    assert gate.verdict == "fail" and slow.action == "rollback"
    # 1.2 x the stable p99 is 2.326 + ln(1.2 / 1.5) / 0.5 standard deviations above the candidate's median
    expected_share = stats.norm.sf(stats.norm.ppf(0.99) + math.log(1.2 / 1.5) / SIGMA)
    assert gate.values["slow_share"] == pytest.approx(expected_share, abs=0.006)


# -- the reward gate ------------------------------------------------------------------------


def test_reward_gate_is_skipped_without_rewards_and_fails_a_less_accurate_candidate() -> None:
    rng = np.random.default_rng(9)
    assert verdicts(next_canary_step(canary(step=1), arms(rng, 95_000, 5_000), 0.0, 1.0))["reward"] == "skipped"
    step_totals = arms(rng, 95_000, 5_000, stable_reward=0.90, candidate_reward=0.80)
    decision = next_canary_step(canary(step=1), step_totals, 0.0, 1.0)
    gate = next(g for g in decision.gates if g.gate == "reward")
    assert gate.verdict == "fail" and decision.action == "rollback"
    s, c = step_totals["champion"], step_totals["challenger"]
    assert gate.values["difference"] == pytest.approx(c.reward_sum / c.reward_n - s.reward_sum / s.reward_n)
    equal = arms(rng, 40_000, 40_000, stable_reward=0.9, candidate_reward=0.9)
    gates = {"max_reward_decrease": 0.02}
    assert verdicts(next_canary_step(canary(step=3, gates=gates), equal, 0.0, 1.0))["reward"] == "pass"


# -- error rates of the decision, by simulation -----------------------------------------------------


def simulate_step(rng: np.random.Generator, replicates: int, looks: int, candidate_errors: float,
                  candidate_median: float = MEDIAN) -> list[list[str]]:
    """Actions at each look of one step (step 2, 5 %), with cumulative counts as the counters keep them."""
    per_look_stable, per_look_candidate = 9_500, 500
    # sticky: the split check (a chi-square per look, the slowest part) is not what these runs measure
    policy = TrafficPolicy.from_dict({**canary(step=1).to_dict(), "sticky": "header:x-user"})
    p_fast, p_slow = bucket_probabilities(MEDIAN), bucket_probabilities(candidate_median)
    shape = (replicates, looks)
    s_err = rng.binomial(per_look_stable, 0.005, shape).cumsum(axis=1)
    c_err = rng.binomial(per_look_candidate, candidate_errors, shape).cumsum(axis=1)
    s_lat = rng.multinomial(per_look_stable, p_fast, shape).cumsum(axis=1)
    c_lat = rng.multinomial(per_look_candidate, p_slow, shape).cumsum(axis=1)
    out = []
    for r in range(replicates):
        actions = []
        for k in range(looks):
            step_totals = {
                "champion": ArmTotals("champion", requests=per_look_stable * (k + 1), errors=int(s_err[r, k]),
                                      latency_buckets=tuple(int(x) for x in s_lat[r, k])),
                "challenger": ArmTotals("challenger", requests=per_look_candidate * (k + 1), errors=int(c_err[r, k]),
                                        latency_buckets=tuple(int(x) for x in c_lat[r, k])),
            }
            actions.append(next_canary_step(policy, step_totals, 0.0, 1e6).action)
        out.append(actions)
    return out


def first_decisive(actions: list[str]) -> str:
    return next((a for a in actions if a != "hold"), "hold")


def test_a_candidate_exactly_at_the_error_margin_is_wrongly_advanced_at_most_alpha_over_all_looks() -> None:
    rng = np.random.default_rng(10)
    replicates = 300
    runs = simulate_step(rng, replicates, looks=12, candidate_errors=0.015)
    advanced = np.mean([first_decisive(a) == "advance" for a in runs])
    assert advanced <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / replicates)


def test_an_as_good_candidate_is_rarely_rolled_back_and_usually_advances_within_the_step() -> None:
    rng = np.random.default_rng(11)
    replicates = 300
    runs = [first_decisive(a) for a in simulate_step(rng, replicates, looks=12, candidate_errors=0.005)]
    rolled_back = np.mean([a == "rollback" for a in runs])
    assert rolled_back <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / replicates)
    assert np.mean([a == "advance" for a in runs]) >= 0.9


def test_a_candidate_with_ten_times_the_errors_is_rolled_back_within_the_step() -> None:
    rng = np.random.default_rng(12)
    runs = [first_decisive(a) for a in simulate_step(rng, 200, looks=6, candidate_errors=0.05)]
    assert np.mean([a == "rollback" for a in runs]) >= 0.99
