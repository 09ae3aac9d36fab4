"""Rollout statistics against SciPy and statsmodels on fixed data, and their error rates by simulation.

Simulations draw the cumulative per-arm counts with NumPy (what the SQL counters would hold at each
interval) and call the functions the way the canary controller does, once per arm pair per look.
Each rate is checked against its claim plus three binomial standard errors of the simulation.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import integrate, stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.nonparametric import rank_compare_2indep
from statsmodels.stats.power import NormalIndPower
from statsmodels.stats.proportion import (
    confint_proportions_2indep,
    power_proportions_2indep,
    proportion_confint,
    proportion_effectsize,
    proportions_ztest,
)
from statsmodels.stats.weightstats import DescrStatsW

from shipyard.rollout.sequential import NonInferiority, mixing_scale, non_inferior, sequential_test
from shipyard.rollout.statistics import (
    Alternative,
    Mean,
    Proportion,
    benjamini_hochberg,
    compare_means,
    compare_proportions,
    estimate,
    mann_whitney,
    minimum_detectable_effect,
    required_sample_size,
    sample_ratio_mismatch,
    time_to_decision,
)

ALPHA = 0.05
CONTROL = Proportion(120, 1000)
TREATMENT = Proportion(150, 1000)


def simulation_bound(rate: float, runs: int) -> float:
    """The largest observed rate still consistent with ``rate``: three binomial standard errors above."""
    return rate + 3 * math.sqrt(rate * (1 - rate) / runs)


def cumulative_counts(
    rng: np.random.Generator, runs: int, intervals: int, step: int, rate: float
) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative successes and units of one arm at each interval: arrays of shape (runs, intervals)."""
    successes = rng.binomial(step, rate, size=(runs, intervals)).cumsum(axis=1)
    units = np.broadcast_to(step * np.arange(1, intervals + 1), (runs, intervals))
    return successes, units


# --- per-arm estimates ------------------------------------------------------------------


def test_proportion_interval_is_wilson() -> None:
    low, high = proportion_confint(120, 1000, alpha=ALPHA, method="wilson")
    result = estimate(CONTROL, ALPHA)
    assert result.value == 0.12
    assert result.lower == pytest.approx(low, rel=1e-9)
    assert result.upper == pytest.approx(high, rel=1e-9)


def test_mean_interval_is_student_t() -> None:
    sample = np.random.default_rng(3).lognormal(3.0, 0.6, size=40)
    low, high = DescrStatsW(sample).tconfint_mean(alpha=0.1)
    result = estimate(Mean.from_sample(sample), 0.1)
    assert result.value == pytest.approx(sample.mean())
    assert (result.lower, result.upper) == pytest.approx((low, high), rel=1e-9)


def test_mean_from_sums_equals_the_sample_summary() -> None:
    sample = np.random.default_rng(4).normal(250.0, 30.0, size=500)
    from_sums = Mean.from_sums(sample.size, float(sample.sum()), float((sample**2).sum()))
    assert from_sums.n == 500
    assert from_sums.mean == pytest.approx(np.mean(sample), rel=1e-12)
    assert from_sums.variance == pytest.approx(np.var(sample, ddof=1), rel=1e-9)
    from_sample = Mean.from_sample(sample)
    assert (from_sample.n, from_sample.mean, from_sample.variance) == (500, np.mean(sample), np.var(sample, ddof=1))


def test_invalid_aggregates_are_refused() -> None:
    with pytest.raises(ValueError):
        Proportion(11, 10)
    with pytest.raises(ValueError):
        Mean(10, 1.0, -0.5)
    with pytest.raises(TypeError):
        sequential_test(CONTROL, Mean(1000, 0.15, 0.1275), tau=0.01)


def test_empty_arms_give_no_answer_instead_of_an_error() -> None:
    # filterwarnings = error: a division by zero or a NumPy warning would fail this test.
    empty = Proportion(0, 0)
    assert estimate(empty).lower == 0.0 and estimate(empty).upper == 1.0
    assert math.isnan(estimate(empty).value)
    comparison = compare_proportions(empty, TREATMENT)
    assert math.isnan(comparison.p_value) and not comparison.significant
    assert not compare_proportions(Proportion(0, 50), Proportion(0, 50)).significant
    assert not compare_means(Mean.from_sample([1.0]), Mean.from_sample([2.0, 3.0])).significant
    seq = sequential_test(empty, TREATMENT, tau=0.01, previous_p=0.3)
    assert seq.p_value == 0.3 and seq.lower == -math.inf and seq.upper == math.inf and not seq.reject
    assert non_inferior(empty, empty, 0.01, higher_is_better=False).decision == "undecided"


# --- fixed-horizon comparisons --------------------------------------------------------------


@pytest.mark.parametrize(
    ("alternative", "statsmodels_alternative"), [("two-sided", "two-sided"), ("greater", "larger")]
)
def test_two_proportion_z_test_matches_statsmodels(alternative: Alternative, statsmodels_alternative: str) -> None:
    z, p = proportions_ztest([150, 120], [1000, 1000], alternative=statsmodels_alternative)
    result = compare_proportions(CONTROL, TREATMENT, ALPHA, alternative)
    assert result.statistic == pytest.approx(z, rel=1e-9)
    assert result.p_value == pytest.approx(p, rel=1e-9)
    assert result.significant == (p < ALPHA)
    assert (result.control, result.treatment, result.difference.value) == pytest.approx((0.12, 0.15, 0.03))


def test_proportion_lift_intervals_match_statsmodels() -> None:
    result = compare_proportions(CONTROL, TREATMENT, ALPHA)
    diff_low, diff_high = confint_proportions_2indep(150, 1000, 120, 1000, method="wald", compare="diff", alpha=ALPHA)
    ratio_low, ratio_high = confint_proportions_2indep(150, 1000, 120, 1000, method="log", compare="ratio", alpha=ALPHA)
    assert (result.difference.lower, result.difference.upper) == pytest.approx((diff_low, diff_high), rel=1e-9)
    assert result.relative.value == pytest.approx(0.25)
    assert (result.relative.lower, result.relative.upper) == pytest.approx((ratio_low - 1, ratio_high - 1), rel=1e-9)


def test_one_sided_comparison_gives_a_one_sided_interval() -> None:
    result = compare_proportions(CONTROL, TREATMENT, ALPHA, "less")
    assert result.difference.lower == -math.inf
    assert result.relative.lower == -1.0  # a ratio interval open below ends at -100 %
    # The 95 % one-sided upper bound is the two-sided 90 % upper bound.
    two_sided_90 = confint_proportions_2indep(150, 1000, 120, 1000, method="wald", compare="diff", alpha=0.10)
    assert result.difference.upper == pytest.approx(two_sided_90[1], rel=1e-9)
    assert result.p_value == pytest.approx(proportions_ztest([150, 120], [1000, 1000], alternative="smaller")[1])


@pytest.mark.parametrize("alternative", ["two-sided", "greater", "less"])
def test_welch_t_test_from_summaries_matches_the_test_on_raw_data(alternative: Alternative) -> None:
    rng = np.random.default_rng(5)
    control_sample = rng.normal(100.0, 15.0, size=400)
    treatment_sample = rng.normal(103.0, 25.0, size=250)  # unequal variances and sizes: Welch's case
    raw = stats.ttest_ind(treatment_sample, control_sample, equal_var=False, alternative=alternative)
    from_stats = stats.ttest_ind_from_stats(
        treatment_sample.mean(),
        treatment_sample.std(ddof=1),
        250,
        control_sample.mean(),
        control_sample.std(ddof=1),
        400,
        equal_var=False,
        alternative=alternative,
    )
    result = compare_means(Mean.from_sample(control_sample), Mean.from_sample(treatment_sample), 0.05, alternative)
    assert result.statistic == pytest.approx(raw.statistic, rel=1e-9)
    assert result.p_value == pytest.approx(raw.pvalue, rel=1e-9)
    assert result.p_value == pytest.approx(from_stats.pvalue, rel=1e-9)
    low, high = raw.confidence_interval(0.95)
    assert (result.difference.lower, result.difference.upper) == pytest.approx((low, high), rel=1e-9)


def test_relative_lift_interval_of_means_covers_the_true_ratio() -> None:
    # Skewed latencies (exponential), true ratio 1.1: the delta-method interval should cover it ~95 % of the time.
    rng = np.random.default_rng(6)
    runs, n = 2000, 400
    control = rng.exponential(100.0, size=(runs, n))
    treatment = rng.exponential(110.0, size=(runs, n))
    covered = 0
    for c, t in zip(control, treatment, strict=True):
        rel = compare_means(Mean.from_sample(c), Mean.from_sample(t)).relative
        covered += rel.lower < 0.10 < rel.upper
    coverage = covered / runs
    assert abs(coverage - 0.95) < 3 * math.sqrt(0.95 * 0.05 / runs)


def test_mann_whitney_matches_scipy_and_the_pairwise_effect() -> None:
    rng = np.random.default_rng(7)
    control = np.round(rng.lognormal(4.0, 0.5, size=300))  # rounded to whole ms: ties, as real latencies have
    treatment = np.round(rng.lognormal(4.1, 0.5, size=200))
    result = mann_whitney(control, treatment, alternative="greater")
    reference = stats.mannwhitneyu(treatment, control, alternative="greater")
    assert result.statistic == reference.statistic
    assert result.p_value == pytest.approx(reference.pvalue, rel=1e-12)
    pairwise = np.mean(treatment[:, None] > control[None, :]) + 0.5 * np.mean(treatment[:, None] == control[None, :])
    assert result.effect == pytest.approx(pairwise, rel=1e-12)
    assert result.effect == pytest.approx(rank_compare_2indep(treatment, control).prob1, rel=1e-9)
    assert result.p_value < 0.05 < mann_whitney(treatment, control, alternative="greater").p_value


# --- always-valid sequential inference --------------------------------------------------------


def mixture_likelihood_ratio(difference: float, s2: float, tau: float, theta0: float) -> float:
    """The mSPRT statistic by numerically integrating the likelihood over the mixing distribution.

    Independent of the module's closed form: the likelihood of the estimate averaged over
    theta ~ N(theta0, tau^2), divided by its likelihood at theta0.
    """

    def integrand(theta: float) -> float:
        return float(stats.norm.pdf(difference, theta, math.sqrt(s2)) * stats.norm.pdf(theta, theta0, tau))

    spread = 12 * (math.sqrt(s2) + tau)
    low, high = min(theta0, difference) - spread, max(theta0, difference) + spread
    mixture, _ = integrate.quad(integrand, low, high, points=[theta0, difference], limit=200)
    return float(mixture) / float(stats.norm.pdf(difference, theta0, math.sqrt(s2)))


def test_sequential_p_value_and_confidence_sequence_follow_from_the_mixture_likelihood_ratio() -> None:
    control, treatment = Mean(800, 100.0, 400.0), Mean(900, 102.5, 625.0)
    s2 = 400.0 / 800 + 625.0 / 900
    tau, theta0 = 2.0, 0.5
    result = sequential_test(control, treatment, tau=tau, theta0=theta0, alpha=ALPHA)
    assert result.difference == pytest.approx(2.5)
    assert result.p_value == pytest.approx(1 / mixture_likelihood_ratio(2.5, s2, tau, theta0), rel=1e-6)
    # The confidence sequence ends where the statistic for that null reaches 1 / alpha.
    for bound in (result.lower, result.upper):
        assert mixture_likelihood_ratio(2.5, s2, tau, bound) == pytest.approx(1 / ALPHA, rel=1e-6)
    assert result.reject == (result.p_value <= ALPHA)
    # The p-value is a running minimum: an earlier smaller one stays.
    assert sequential_test(control, treatment, tau=tau, theta0=theta0, previous_p=0.01).p_value == 0.01


def test_mixing_scale_minimises_the_confidence_sequence_at_the_planned_horizon() -> None:
    mde = 0.01
    tau = mixing_scale(mde, ALPHA, power=0.8)
    # Variance of the difference where a fixed-horizon test has 80 % power for the MDE.
    s = mde / (stats.norm.isf(ALPHA / 2) + stats.norm.ppf(0.8))
    arm = Mean(2, 0.0, s**2)  # variance of the difference s**2 / 2 + s**2 / 2

    def width(scale: float) -> float:
        result = sequential_test(arm, arm, tau=scale, alpha=ALPHA)
        return float(result.upper - result.lower)

    assert width(tau) < width(0.9 * tau) and width(tau) < width(1.1 * tau)
    assert tau == pytest.approx(mde, rel=0.05)  # the documented rule of thumb: tau is about the MDE


def test_peeking_every_interval_keeps_the_sequential_false_positive_rate_but_not_the_naive_one() -> None:
    rng = np.random.default_rng(11)
    runs, intervals, step, rate = 1000, 20, 200, 0.1
    tau = mixing_scale(0.1 * rate)  # a 10 % relative lift is the effect worth detecting
    control, units = cumulative_counts(rng, runs, intervals, step, rate)
    treatment, _ = cumulative_counts(rng, runs, intervals, step, rate)
    sequential_rejections = naive_rejections = 0
    for c_run, t_run, n_run in zip(control, treatment, units, strict=True):
        p, naive = 1.0, False
        for c, t, n in zip(c_run.tolist(), t_run.tolist(), n_run.tolist(), strict=True):
            p = sequential_test(Proportion(c, n), Proportion(t, n), tau=tau, previous_p=p).p_value
            naive = naive or compare_proportions(Proportion(c, n), Proportion(t, n)).significant
        sequential_rejections += p <= ALPHA
        naive_rejections += naive
    bound = simulation_bound(ALPHA, runs)
    assert sequential_rejections / runs <= bound
    # The same simulation sees the inflation of a fixed-horizon test read at every interval.
    assert naive_rejections / runs > bound


def test_confidence_sequence_covers_a_true_difference_at_every_look_and_detects_it() -> None:
    rng = np.random.default_rng(12)
    runs, intervals, step = 500, 20, 200
    tau = mixing_scale(0.01)
    control, units = cumulative_counts(rng, runs, intervals, step, 0.10)
    treatment, _ = cumulative_counts(rng, runs, intervals, step, 0.125)
    missed = detected = 0
    for c_run, t_run, n_run in zip(control, treatment, units, strict=True):
        p, miss = 1.0, False
        for c, t, n in zip(c_run.tolist(), t_run.tolist(), n_run.tolist(), strict=True):
            result = sequential_test(Proportion(c, n), Proportion(t, n), tau=tau, previous_p=p)
            p = result.p_value
            miss = miss or not result.lower < 0.025 < result.upper
        missed += miss
        detected += p <= ALPHA
    assert missed / runs <= simulation_bound(ALPHA, runs)
    # A 25 % lift of a 10 % rate: read once at 4,000 units per arm, a fixed-horizon test finds it in ~93 %
    # of these runs; the always-valid test pays for its peeking with some of that power but finds most.
    assert detected / runs > 0.5


def test_non_inferiority_fails_a_much_worse_error_rate_within_a_few_hundred_units() -> None:
    # Worked example: 5 % errors against 0.5 %, gate "at most 1 point worse".
    assert non_inferior(Proportion(5, 1000), Proportion(50, 1000), 0.01, higher_is_better=False).decision == "fail"
    rng = np.random.default_rng(13)
    runs, intervals, step = 200, 20, 100
    control, units = cumulative_counts(rng, runs, intervals, step, 0.005)
    treatment, _ = cumulative_counts(rng, runs, intervals, step, 0.05)
    first_fail = []
    for c_run, t_run, n_run in zip(control, treatment, units, strict=True):
        for c, t, n in zip(c_run.tolist(), t_run.tolist(), n_run.tolist(), strict=True):
            decision = non_inferior(Proportion(c, n), Proportion(t, n), 0.01, higher_is_better=False).decision
            assert decision != "pass"
            if decision == "fail":
                first_fail.append(n)
                break
    assert len(first_fail) == runs  # every run failed within 2,000 units per arm
    assert np.median(first_fail) <= 1000


@pytest.mark.parametrize(
    ("treatment_rate", "wrong"),
    [(0.02, "fail"), (0.03, "pass")],  # equal rates must not fail; a rate exactly at the margin must not pass
)
def test_non_inferiority_wrong_decisions_stay_below_alpha_when_peeked_every_interval(
    treatment_rate: float, wrong: str
) -> None:
    rng = np.random.default_rng(14)
    runs, intervals, step, margin = 500, 20, 500, 0.01
    control, units = cumulative_counts(rng, runs, intervals, step, 0.02)
    treatment, _ = cumulative_counts(rng, runs, intervals, step, treatment_rate)
    wrong_runs = right_runs = 0
    for c_run, t_run, n_run in zip(control, treatment, units, strict=True):
        for c, t, n in zip(c_run.tolist(), t_run.tolist(), n_run.tolist(), strict=True):
            decision = non_inferior(Proportion(c, n), Proportion(t, n), margin, higher_is_better=False).decision
            if decision != "undecided":
                wrong_runs += decision == wrong
                right_runs += decision != wrong
                break  # the controller acts on the first decisive answer
    assert wrong_runs / runs <= simulation_bound(ALPHA, runs)
    if wrong == "fail":
        assert right_runs / runs > 0.5  # equal rates are shown non-inferior at 10,000 units per arm


def test_relative_latency_gate() -> None:
    rng = np.random.default_rng(15)
    control = Mean.from_sample(rng.lognormal(4.6, 0.5, size=5000))
    slower = Mean.from_sample(rng.lognormal(4.6 + math.log(1.3), 0.5, size=5000))  # 30 % slower
    same = Mean.from_sample(rng.lognormal(4.6, 0.5, size=5000))
    faster = Mean.from_sample(rng.lognormal(4.6 - math.log(1.3), 0.5, size=5000))

    def gate(treatment: Mean) -> NonInferiority:  # mean latency at most 10 % higher
        return non_inferior(control, treatment, 0.10, higher_is_better=False, relative=True)

    assert gate(slower).decision == "fail"
    assert gate(same).decision != "fail"
    assert gate(faster).decision == "pass"
    result = gate(slower)
    assert result.difference.lower < slower.mean / control.mean - 1 < result.difference.upper


def test_non_inferiority_for_a_higher_is_better_metric() -> None:
    # Accuracy 90 % in both arms at 20,000 units: shown no worse than 2 points; 80 % is shown worse.
    control = Proportion(18_000, 20_000)
    assert non_inferior(control, Proportion(18_000, 20_000), 0.02, higher_is_better=True).decision == "pass"
    assert non_inferior(control, Proportion(16_000, 20_000), 0.02, higher_is_better=True).decision == "fail"


# --- sample ratio mismatch ------------------------------------------------------------------


def test_sample_ratio_mismatch_is_the_chi_square_test() -> None:
    reference = stats.chisquare([89_000, 11_000], f_exp=[90_000, 10_000])
    result = sample_ratio_mismatch([89_000, 11_000], [0.9, 0.1])
    assert result.statistic == pytest.approx(reference.statistic)
    assert result.p_value == pytest.approx(reference.pvalue)
    assert result.mismatch  # a 90/10 policy observed as 89/11 at 100,000 units


def test_sample_ratio_mismatch_stays_quiet_on_correct_splits() -> None:
    rng = np.random.default_rng(16)
    splits = rng.multinomial(100_000, [0.9, 0.1], size=500)
    alarms = sum(sample_ratio_mismatch(split.tolist(), [90, 10]).mismatch for split in splits)
    assert alarms <= 4  # expected 0.5 at alpha = 0.001; P(more than 4) is below 2e-4


def test_sample_ratio_mismatch_edge_cases() -> None:
    assert sample_ratio_mismatch([10, 5, 0], [0.5, 0.5, 0.0]).p_value == pytest.approx(
        stats.chisquare([10, 5], f_exp=[7.5, 7.5]).pvalue
    )
    assert sample_ratio_mismatch([10, 5, 1], [0.5, 0.5, 0.0]).mismatch  # traffic to an arm the policy closed
    assert not sample_ratio_mismatch([0, 0], [0.5, 0.5]).mismatch
    with pytest.raises(ValueError):
        sample_ratio_mismatch([10, 5], [1.0])


# --- planning ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("baseline", "mde"), [(0.1, 0.05), (0.02, 0.10), (0.5, -0.03)])
def test_required_sample_size_matches_statsmodels_power(baseline: float, mde: float) -> None:
    effect = proportion_effectsize(baseline * (1 + mde), baseline)
    reference = NormalIndPower().solve_power(effect_size=effect, alpha=ALPHA, power=0.8, ratio=1.0)
    n = required_sample_size(baseline, mde, ALPHA, 0.8)
    assert n == math.ceil(reference)
    # The pooled z-test's power at that size, computed independently by statsmodels, is the planned one.
    power = power_proportions_2indep(baseline * mde, baseline, n, alpha=ALPHA).power
    assert power == pytest.approx(0.8, abs=0.005)


def test_minimum_detectable_effect_has_the_planned_power_in_statsmodels() -> None:
    mde = minimum_detectable_effect(0.1, 20_000, ALPHA, 0.8)
    effect = proportion_effectsize(0.1 * (1 + mde), 0.1)
    assert NormalIndPower().power(effect_size=effect, nobs1=20_000, alpha=ALPHA, ratio=1.0) == pytest.approx(
        0.8, abs=1e-5
    )
    # and it is the inverse of required_sample_size
    assert required_sample_size(0.1, mde, ALPHA, 0.8) in (20_000, 20_001)
    assert math.isnan(minimum_detectable_effect(0.99, 10))


def test_power_at_the_planned_sample_size_is_the_planned_power() -> None:
    rng = np.random.default_rng(17)
    baseline, mde, runs = 0.1, 0.05, 2000
    n = required_sample_size(baseline, mde, ALPHA, 0.8)
    control = rng.binomial(n, baseline, size=runs)
    treatment = rng.binomial(n, baseline * (1 + mde), size=runs)
    detected = sum(
        compare_proportions(Proportion(c, n), Proportion(t, n)).significant
        for c, t in zip(control.tolist(), treatment.tolist(), strict=True)
    )
    assert detected / runs == pytest.approx(0.8, abs=0.04)


def test_time_to_decision() -> None:
    assert time_to_decision(1000, 400, 20.0) == pytest.approx(30.0)
    assert time_to_decision(1000, 1200, 20.0) == 0.0
    assert time_to_decision(1000, 400, 0.0) is None


# --- multiple comparisons -------------------------------------------------------------------


def test_benjamini_hochberg_matches_statsmodels() -> None:
    p_values = [0.001, 0.008, 0.039, 0.041, 0.042, 0.06, 0.074, 0.205, 0.212, 0.216]
    rejected, adjusted, _, _ = multipletests(p_values, alpha=ALPHA, method="fdr_bh")
    result = benjamini_hochberg(p_values, ALPHA)
    assert result.adjusted == pytest.approx(tuple(adjusted), rel=1e-12)
    assert result.rejected == tuple(bool(r) for r in rejected)
    assert benjamini_hochberg([]).rejected == ()
