"""Experiment statistics for rollouts: estimates, fixed-horizon comparisons, traffic-split health, planning.

The canary controller, ``shipyard experiment report``, ``GET /v1/experiments`` and the per-arm
Prometheus metrics all read the same numbers from here. The fleet keeps per-arm counters in SQL,
not raw samples, so the inputs are per-arm aggregates: a ``Proportion`` (successes out of n) or a
``Mean`` (n, mean, variance, buildable from running sums). Only ``mann_whitney`` takes samples
(latencies from the prediction log).

What is here, and which claim each makes:

* ``estimate``                 one arm's value with a Wilson (proportion) or t (mean) interval
* ``compare_proportions``      fixed-horizon test: pooled two-proportion z-test, Wald interval for
                               the difference, delta-method interval for the relative lift
* ``compare_means``            the same for means with Welch's t-test
* ``mann_whitney``             rank test for latency samples plus the common-language effect size
* ``sample_ratio_mismatch``    chi-square test that traffic split as configured
* ``required_sample_size``, ``minimum_detectable_effect``, ``time_to_decision``   planning
* ``benjamini_hochberg``       false-discovery-rate control across many metrics or arms

Fixed-horizon results (``compare_*``) are valid only when read once, at a sample size fixed in
advance; a gate that looks every interval must use ``rollout/sequential.py`` (always-valid tests).

Everything is a pure function over frozen dataclasses; degenerate inputs (an empty arm, zero
variance) give NaN estimates, unbounded intervals and no decision rather than an exception,
because a canary's first intervals routinely have them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

# SciPy is imported inside the functions that compute: a server whose controller never
# computes a statistic (no canary, no bandit) does not import it.

Alternative = Literal["two-sided", "greater", "less"]
"""Alternative hypothesis about treatment minus control: ``greater`` means treatment is larger."""

_NAN = float("nan")
_INF = float("inf")


# --- per-arm summaries --------------------------------------------------------------------


@dataclass(frozen=True)
class Proportion:
    """One arm of a binary metric (conversions, errors): ``successes`` out of ``n`` units."""

    successes: int
    n: int

    def __post_init__(self) -> None:
        if self.n < 0 or not 0 <= self.successes <= self.n:
            raise ValueError(f"need 0 <= successes <= n, got successes={self.successes}, n={self.n}")

    @property
    def mean(self) -> float:
        """The observed rate (NaN for an empty arm)."""
        return self.successes / self.n if self.n else _NAN

    @property
    def variance(self) -> float:
        """Per-unit Bernoulli variance at the observed rate, p(1 - p)."""
        p = self.mean
        return p * (1.0 - p)


@dataclass(frozen=True)
class Mean:
    """One arm of a continuous metric (latency, revenue): size, mean and sample variance (ddof=1)."""

    n: int
    mean: float
    variance: float

    def __post_init__(self) -> None:
        if self.n < 0:
            raise ValueError(f"n must be >= 0, got {self.n}")
        if self.variance < 0:
            raise ValueError(f"variance must be >= 0, got {self.variance}")

    @classmethod
    def from_sums(cls, n: int, total: float, total_of_squares: float) -> Mean:
        """The summary of ``n`` values from their sum and sum of squares (what SQL counters keep).

        The variance is clipped at zero: with values of nearly equal size, the subtraction can
        come out slightly negative from rounding alone.
        """
        if n == 0:
            return cls(0, _NAN, _NAN)
        mean = total / n
        if n == 1:
            return cls(1, mean, _NAN)
        variance = max((total_of_squares - total * mean) / (n - 1), 0.0)
        return cls(n, mean, variance)

    @classmethod
    def from_sample(cls, values: Sequence[float] | np.ndarray) -> Mean:
        """The summary of a sample of values."""
        x = np.asarray(values, dtype=float)
        if x.size == 0:
            return cls(0, _NAN, _NAN)
        variance = float(np.var(x, ddof=1)) if x.size > 1 else _NAN
        return cls(int(x.size), float(np.mean(x)), variance)


Arm = Proportion | Mean
"""One arm's aggregate; the sequential functions accept either (both arms of the same kind)."""


@dataclass(frozen=True)
class Estimate:
    """A point estimate with a confidence interval (bounds may be infinite for one-sided intervals)."""

    value: float
    lower: float
    upper: float


def usable(arm: Arm) -> bool:
    # Intervals need a variance estimate: two units for a mean, one for a proportion.
    if isinstance(arm, Proportion):
        return arm.n > 0
    return arm.n > 1 and math.isfinite(arm.variance)


def estimate(arm: Arm, alpha: float = 0.05) -> Estimate:
    """One arm's rate or mean with a two-sided ``1 - alpha`` confidence interval.

    A proportion gets the Wilson score interval (good coverage near 0 and 1, where error rates
    live); a mean gets the Student t interval.

    Args:
        arm: the arm's aggregate.
        alpha: one minus the confidence level.

    Returns:
        The estimate; for an arm too small to estimate, NaN with the widest possible interval.
    """
    from scipy import stats
    if isinstance(arm, Proportion):
        if arm.n == 0:
            return Estimate(_NAN, 0.0, 1.0)
        ci = stats.binomtest(arm.successes, arm.n).proportion_ci(confidence_level=1 - alpha, method="wilson")
        return Estimate(arm.mean, float(ci.low), float(ci.high))
    if not usable(arm):
        return Estimate(arm.mean, -_INF, _INF)
    se = math.sqrt(arm.variance / arm.n)
    if se == 0.0:
        return Estimate(arm.mean, arm.mean, arm.mean)
    low, high = stats.t.interval(1 - alpha, arm.n - 1, loc=arm.mean, scale=se)
    return Estimate(arm.mean, float(low), float(high))


# --- fixed-horizon comparison -----------------------------------------------------------------


@dataclass(frozen=True)
class Comparison:
    """Treatment against control, read once at a planned sample size."""

    control: float
    """Control's rate or mean."""
    treatment: float
    """Treatment's rate or mean."""
    difference: Estimate
    """Absolute lift, treatment minus control, with its confidence interval."""
    relative: Estimate
    """Relative lift, treatment / control - 1, with its confidence interval (NaN unless both are positive)."""
    statistic: float
    """The z (proportions) or Welch t (means) statistic of treatment minus control."""
    p_value: float
    significant: bool
    """``p_value < alpha``; follows the test, which can differ from the interval right at the edge."""
    alternative: Alternative


def _interval(center: float, se: float, quantile: float, alternative: Alternative) -> tuple[float, float]:
    """``center -/+ quantile * se``, open on one side for a one-sided alternative."""
    lower = center - quantile * se if alternative != "less" else -_INF
    upper = center + quantile * se if alternative != "greater" else _INF
    return lower, upper


def _relative_lift(control: Arm, treatment: Arm, alpha: float, alternative: Alternative) -> Estimate:
    """Relative lift by the delta method on the log ratio of means.

    Var(log m_t - log m_c) ~ var_t / (n_t m_t^2) + var_c / (n_c m_c^2); the interval is built on the
    log scale and mapped back with exp(.) - 1, so it is asymmetric and never below -100 %.
    (Fieller's interval is the exact alternative; the two agree at the sample sizes rollouts reach.)
    For proportions this is the ``log`` ratio interval of Katz et al. (1978).
    """
    mc, mt = control.mean, treatment.mean
    if not (usable(control) and usable(treatment)) or not (mc > 0 and mt > 0):
        return Estimate(_NAN, _NAN, _NAN)
    log_ratio = math.log(mt / mc)
    se = math.sqrt(treatment.variance / (treatment.n * mt**2) + control.variance / (control.n * mc**2))
    q = _normal_quantile(alpha, alternative)
    lower, upper = _interval(log_ratio, se, q, alternative)
    return Estimate(math.expm1(log_ratio), math.expm1(lower), math.expm1(upper))


# scipy.special's normal ufuncs rather than scipy.stats.norm: the same values at a
# hundredth of the overhead, which matters to a simulation or a controller making many calls.
def _normal_quantile(alpha: float, alternative: Alternative) -> float:
    """The upper ``alpha`` (one-sided) or ``alpha / 2`` (two-sided) standard normal quantile."""
    from scipy import special
    return -float(special.ndtri(alpha / 2 if alternative == "two-sided" else alpha))


def _normal_p_value(z: float, alternative: Alternative) -> float:
    from scipy import special
    if alternative == "greater":
        return float(special.ndtr(-z))
    if alternative == "less":
        return float(special.ndtr(z))
    return float(2 * special.ndtr(-abs(z)))


def z_sum(alpha: float, power: float) -> float:
    """z_{1-alpha/2} + z_power: the standardized effect at which a two-sided test has ``power``."""
    from scipy import special
    return float(special.ndtri(power) - special.ndtri(alpha / 2))


def _empty_comparison(control: Arm, treatment: Arm, alternative: Alternative) -> Comparison:
    none = Estimate(treatment.mean - control.mean, _NAN, _NAN)
    return Comparison(control.mean, treatment.mean, none, Estimate(_NAN, _NAN, _NAN), _NAN, _NAN, False, alternative)


def compare_proportions(
    control: Proportion, treatment: Proportion, alpha: float = 0.05, alternative: Alternative = "two-sided"
) -> Comparison:
    """Two-proportion z-test with intervals for the absolute and relative lift.

    The test pools the two arms for its standard error (the null hypothesis says the rates are
    equal); the interval for the difference is the unpooled Wald interval, as the difference need
    not be zero there. The relative lift uses the delta method on the log ratio.

    Args:
        control: the control arm.
        treatment: the treatment arm.
        alpha: significance level (and one minus the confidence level of the intervals).
        alternative: ``greater`` tests whether treatment's rate is higher, ``less`` lower;
            one-sided alternatives get one-sided intervals.

    Returns:
        The comparison; an empty arm or all-zero/all-one outcomes give NaN statistics and
        ``significant=False``.
    """
    if control.n == 0 or treatment.n == 0:
        return _empty_comparison(control, treatment, alternative)
    pc, pt = control.mean, treatment.mean
    diff = pt - pc
    pooled = (control.successes + treatment.successes) / (control.n + treatment.n)
    pooled_se = math.sqrt(pooled * (1 - pooled) * (1 / control.n + 1 / treatment.n))
    if pooled_se == 0.0:
        return _empty_comparison(control, treatment, alternative)
    z = diff / pooled_se
    p = _normal_p_value(z, alternative)
    se = math.sqrt(control.variance / control.n + treatment.variance / treatment.n)
    lower, upper = _interval(diff, se, _normal_quantile(alpha, alternative), alternative)
    return Comparison(
        control=pc,
        treatment=pt,
        difference=Estimate(diff, lower, upper),
        relative=_relative_lift(control, treatment, alpha, alternative),
        statistic=z,
        p_value=p,
        significant=p < alpha,
        alternative=alternative,
    )


def compare_means(
    control: Mean, treatment: Mean, alpha: float = 0.05, alternative: Alternative = "two-sided"
) -> Comparison:
    """Welch's t-test from summary statistics, with intervals for the absolute and relative lift.

    Welch's test does not assume equal variances, which a new model version need not keep. The
    interval for the difference uses the same Welch-Satterthwaite degrees of freedom as the test;
    the relative lift uses the delta method on the log ratio (normal quantile).

    Args:
        control: the control arm.
        treatment: the treatment arm.
        alpha: significance level (and one minus the confidence level of the intervals).
        alternative: ``greater`` tests whether treatment's mean is higher, ``less`` lower.

    Returns:
        The comparison; arms with fewer than two units or both with zero variance give NaN
        statistics and ``significant=False``.
    """
    from scipy import stats
    if not (usable(control) and usable(treatment)):
        return _empty_comparison(control, treatment, alternative)
    vc, vt = control.variance / control.n, treatment.variance / treatment.n
    if vc + vt == 0.0:
        return _empty_comparison(control, treatment, alternative)
    result = stats.ttest_ind_from_stats(
        treatment.mean,
        math.sqrt(treatment.variance),
        treatment.n,
        control.mean,
        math.sqrt(control.variance),
        control.n,
        equal_var=False,
        alternative=alternative,
    )
    # Welch-Satterthwaite degrees of freedom, the ones the test above uses.
    df = (vc + vt) ** 2 / (vc**2 / (control.n - 1) + vt**2 / (treatment.n - 1))
    diff = treatment.mean - control.mean
    q = float(stats.t.isf(alpha / 2 if alternative == "two-sided" else alpha, df))
    lower, upper = _interval(diff, math.sqrt(vc + vt), q, alternative)
    p = float(result.pvalue)
    return Comparison(
        control=control.mean,
        treatment=treatment.mean,
        difference=Estimate(diff, lower, upper),
        relative=_relative_lift(control, treatment, alpha, alternative),
        statistic=float(result.statistic),
        p_value=p,
        significant=p < alpha,
        alternative=alternative,
    )


@dataclass(frozen=True)
class MannWhitney:
    """Rank comparison of two samples."""

    statistic: float
    """Mann-Whitney U of the treatment sample."""
    p_value: float
    effect: float
    """Common-language effect size U / (n_t n_c): P(treatment > control) + P(tie) / 2; 0.5 is no effect."""


def mann_whitney(
    control_sample: Sequence[float] | np.ndarray,
    treatment_sample: Sequence[float] | np.ndarray,
    alternative: Alternative = "two-sided",
) -> MannWhitney:
    """Mann-Whitney U test of treatment against control, for latency samples.

    Latencies are skewed with long tails, where a rank test keeps its power and a t-test does
    not. This calls ``scipy.stats.mannwhitneyu`` (tie-corrected, exact for small samples without
    ties, normal approximation otherwise).

    Args:
        control_sample: control's values.
        treatment_sample: treatment's values.
        alternative: ``greater`` tests whether treatment's values tend to be larger (slower).

    Returns:
        U, the p-value and the common-language effect size.
    """
    from scipy import stats
    control = np.asarray(control_sample, dtype=float)
    treatment = np.asarray(treatment_sample, dtype=float)
    result = stats.mannwhitneyu(treatment, control, alternative=alternative)
    u = float(result.statistic)
    return MannWhitney(u, float(result.pvalue), u / (treatment.size * control.size))


# --- traffic split health ---------------------------------------------------------------


@dataclass(frozen=True)
class SRMResult:
    """Sample ratio mismatch: did units split across arms as the policy says?"""

    statistic: float
    p_value: float
    mismatch: bool
    """``p_value < alpha``: the split is off, so comparisons between the arms are not to be trusted."""


def sample_ratio_mismatch(
    observed_counts: Sequence[int], expected_weights: Sequence[float], alpha: float = 0.001
) -> SRMResult:
    """Pearson chi-square test of observed units per arm against the configured weights.

    A mismatch usually means a bug (sticky routing that leaks, an arm that drops requests before
    they are counted), and it biases every comparison; the strict default alpha keeps an
    experiment checked at every interval from alarming by chance.

    Args:
        observed_counts: units seen per arm.
        expected_weights: the policy's weights per arm, in the same order (need not sum to 1).
        alpha: significance level.

    Returns:
        The chi-square statistic, its p-value and whether it signals a mismatch. An arm with
        weight zero that received units is a mismatch outright; no units at all is no evidence.
    """
    from scipy import stats
    observed = np.asarray(observed_counts, dtype=float)
    weights = np.asarray(expected_weights, dtype=float)
    if observed.shape != weights.shape or observed.ndim != 1:
        raise ValueError("observed_counts and expected_weights must be sequences of the same length")
    if np.any(weights < 0) or weights.sum() <= 0:
        raise ValueError("expected_weights must be non-negative with a positive total")
    if np.any(observed[weights == 0] > 0):
        return SRMResult(_INF, 0.0, True)
    observed, weights = observed[weights > 0], weights[weights > 0]
    total = observed.sum()
    if total == 0 or observed.size < 2:
        return SRMResult(0.0, 1.0, False)
    result = stats.chisquare(observed, f_exp=total * weights / weights.sum())
    p = float(result.pvalue)
    return SRMResult(float(result.statistic), p, p < alpha)


# --- planning -------------------------------------------------------------------------------


def required_sample_size(
    baseline_rate: float, minimum_detectable_effect: float, alpha: float = 0.05, power: float = 0.8
) -> int:
    """Units per arm for a fixed-horizon two-sided test to detect a relative lift of a rate.

    Uses the arcsine (Cohen's h) normal approximation, n = 2 ((z_{1-alpha/2} + z_power) / h)^2 with
    h = 2 asin(sqrt(p2)) - 2 asin(sqrt(p1)) and equal arms (Cohen, "Statistical Power Analysis for
    the Behavioral Sciences", 1988, ch. 6). It ignores the far tail of the two-sided test, which
    changes nothing after rounding up.

    Args:
        baseline_rate: control's expected rate p1, in (0, 1).
        minimum_detectable_effect: relative lift to detect, p2 = p1 (1 + mde); may be negative.
        alpha: two-sided significance level.
        power: probability of detecting the lift.

    Returns:
        Units per arm, rounded up.
    """
    if not 0 < baseline_rate < 1:
        raise ValueError("baseline_rate must be in (0, 1)")
    treated = baseline_rate * (1 + minimum_detectable_effect)
    if not 0 < treated < 1 or minimum_detectable_effect == 0:
        raise ValueError(
            "baseline_rate * (1 + minimum_detectable_effect) must be in (0, 1) and differ from the baseline"
        )
    h = 2 * math.asin(math.sqrt(treated)) - 2 * math.asin(math.sqrt(baseline_rate))
    return math.ceil(2 * (z_sum(alpha, power) / h) ** 2)


def minimum_detectable_effect(baseline_rate: float, n_per_arm: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """The smallest relative lift a fixed-horizon two-sided test detects with ``power`` at ``n_per_arm``.

    The inverse of ``required_sample_size`` (same arcsine approximation), for an upward lift.
    Returns NaN when even a rate of 1 would not be detected at this size.
    """
    if not 0 < baseline_rate < 1:
        raise ValueError("baseline_rate must be in (0, 1)")
    if n_per_arm <= 0:
        raise ValueError("n_per_arm must be positive")
    h = z_sum(alpha, power) * math.sqrt(2 / n_per_arm)
    angle = math.asin(math.sqrt(baseline_rate)) + h / 2
    if angle >= math.pi / 2:
        return _NAN
    return math.sin(angle) ** 2 / baseline_rate - 1


def time_to_decision(n_needed: float, n_so_far: float, units_per_second: float) -> float | None:
    """Seconds until ``n_needed`` units at the current rate (0 once reached; None with no traffic).

    Count ``n_needed`` and ``n_so_far`` in the same units (per arm, or in total) as the rate.
    """
    remaining = n_needed - n_so_far
    if remaining <= 0:
        return 0.0
    if units_per_second <= 0:
        return None
    return remaining / units_per_second


# --- multiple comparisons -----------------------------------------------------------------


@dataclass(frozen=True)
class FDRResult:
    """Benjamini-Hochberg adjusted p-values and which hypotheses they reject."""

    adjusted: tuple[float, ...]
    rejected: tuple[bool, ...]


def benjamini_hochberg(p_values: Sequence[float], alpha: float = 0.05) -> FDRResult:
    """Benjamini-Hochberg step-up procedure, for many metrics or arms read at once.

    Controls the expected share of false discoveries among the rejections at ``alpha``
    (independent or positively dependent tests), via ``scipy.stats.false_discovery_control``.
    """
    from scipy import stats
    ps = np.asarray(p_values, dtype=float)
    if ps.size == 0:
        return FDRResult((), ())
    adjusted = stats.false_discovery_control(ps, method="bh")
    return FDRResult(tuple(float(a) for a in adjusted), tuple(bool(a <= alpha) for a in adjusted))
