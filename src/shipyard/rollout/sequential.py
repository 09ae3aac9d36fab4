"""Always-valid sequential inference: tests a canary may run at every interval without inflating errors.

* ``sequential_test``   the mixture SPRT (normal mixing distribution; Johari, Pekelis and Walsh,
                        "Always Valid Inference", arXiv:1512.04922): an always-valid p-value (the running
                        minimum of 1 / the mixture likelihood ratio) and the matching confidence sequence
                        for treatment minus control
* ``mixing_scale``      the mixing distribution's scale for a minimum detectable effect
* ``non_inferior``      a canary gate on the confidence sequence: pass, fail or undecided

Inputs are the per-arm aggregates of ``rollout/statistics.py`` (``Proportion``, ``Mean``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from shipyard.rollout.statistics import Arm, Estimate, Proportion, usable, z_sum

# SciPy is imported inside the function that computes: importing this module does not import it.

Decision = Literal["pass", "fail", "undecided"]
"""A non-inferiority gate's answer at one look."""

_NAN = float("nan")
_INF = float("inf")


# --- always-valid sequential inference -----------------------------------------------------


@dataclass(frozen=True)
class SequentialResult:
    """An always-valid test of treatment minus control, safe to compute at every interval."""

    difference: float
    """Treatment minus control (of means or rates; of log means for a relative gate)."""
    p_value: float
    """Always-valid p-value: the running minimum over all looks so far."""
    lower: float
    """Lower bound of the confidence sequence for the difference at this look."""
    upper: float
    """Upper bound of the confidence sequence for the difference at this look."""
    reject: bool
    """``p_value <= alpha``: the difference is not ``theta0``, with at most ``alpha`` chance over all looks."""


def _plugin_variance(arm: Arm) -> float:
    """Per-unit variance for the sequential statistics.

    A proportion uses the Agresti-Caffo rate (successes + 1) / (n + 2): the plain p(1 - p) is zero
    for an arm with no errors yet, which would make a canary's first intervals look certain.
    """
    if isinstance(arm, Proportion):
        p = (arm.successes + 1) / (arm.n + 2)
        return p * (1 - p)
    return arm.variance


def _msprt_log_ratio(delta: float, s2: float, tau2: float) -> float:
    """log of the mixture likelihood ratio for an estimate ``delta`` away from theta0.

    With the estimate ~ N(theta, s2) and theta mixed over N(theta0, tau2) (Johari et al. 2022,
    eq. for the normal mSPRT, with s2 = V / n):
    Lambda = sqrt(s2 / (s2 + tau2)) * exp(tau2 * delta^2 / (2 s2 (s2 + tau2))).
    """
    return 0.5 * math.log(s2 / (s2 + tau2)) + tau2 * delta**2 / (2 * s2 * (s2 + tau2))


def _cs_radius(s2: float, tau2: float, alpha: float) -> float:
    """Half-width of the confidence sequence: the deltas where Lambda stays below 1 / alpha."""
    return math.sqrt(s2 * (s2 + tau2) / tau2 * (2 * math.log(1 / alpha) + math.log((s2 + tau2) / s2)))


def _sequential(
    difference: float, s2: float, tau: float, theta0: float, alpha: float, previous_p: float
) -> SequentialResult:
    if not (s2 > 0 and math.isfinite(s2) and math.isfinite(difference)):
        return SequentialResult(difference, previous_p, -_INF, _INF, previous_p <= alpha)
    tau2 = tau * tau
    p = min(previous_p, 1.0, math.exp(-_msprt_log_ratio(difference - theta0, s2, tau2)))
    radius = _cs_radius(s2, tau2, alpha)
    return SequentialResult(difference, p, difference - radius, difference + radius, p <= alpha)


def mixing_scale(minimum_detectable_effect: float, alpha: float = 0.05, power: float = 0.8) -> float:
    """The mixing standard deviation tau that makes the mSPRT sharpest where it matters.

    The confidence sequence's half-width at a look with estimate variance s2 is smallest when
    tau^2 = x s2, where x solves x = 2 log(1/alpha) + log(1 + x) (x ~ 8.2 at alpha = 0.05).
    This picks s2 as the variance at the sample size where a fixed-horizon test would detect
    ``minimum_detectable_effect`` with ``power``, s = MDE / (z_{1-alpha/2} + z_power). The result
    is close to the MDE itself (1.02 MDE at alpha = 0.05, power = 0.8): choose tau as the
    smallest effect worth acting on, in the units of the difference being tested.

    Args:
        minimum_detectable_effect: the absolute difference (same units as the metric) to detect.
        alpha: the sequential test's level.
        power: the power a fixed-horizon plan would target.
    """
    from scipy import special
    if minimum_detectable_effect <= 0:
        raise ValueError("minimum_detectable_effect must be positive")
    c = 2 * math.log(1 / alpha)
    # With y = 1 + x the equation is y - log y = c + 1, solved by the lower Lambert W branch.
    x = -float(special.lambertw(-math.exp(-(c + 1)), k=-1).real) - 1
    return math.sqrt(x) * minimum_detectable_effect / z_sum(alpha, power)


def sequential_test(
    control: Arm,
    treatment: Arm,
    *,
    tau: float,
    theta0: float = 0.0,
    alpha: float = 0.05,
    previous_p: float = 1.0,
) -> SequentialResult:
    """Always-valid test and confidence sequence for treatment minus control (mSPRT).

    The mixture sequential probability ratio test of Johari, Pekelis and Walsh ("Always Valid
    Inference: Continuous Monitoring of A/B Tests", arXiv:1512.04922; Operations Research, 2022) for a
    difference of means under a normal approximation, with a normal mixing distribution
    N(theta0, tau^2). The p-value min(previous_p, 1 / Lambda) and the confidence sequence
    {theta : Lambda(theta) < 1 / alpha} hold their level however often they are looked at:
    the chance that the p-value *ever* falls below alpha under the null (or that the sequence
    *ever* misses the true difference) is at most alpha. The variance of the difference is
    the plug-in var_t / n_t + var_c / n_c, which extends the paper's balanced-arm statistic to
    unequal arms.

    Pass the cumulative aggregates at each look; the only state is the previous p-value (start
    at 1.0). The confidence sequence is returned for this look alone; intersecting it with the
    earlier ones is also valid if the caller keeps them.

    Args:
        control: control's cumulative aggregate (a Proportion or a Mean).
        treatment: treatment's cumulative aggregate, of the same kind.
        tau: mixing standard deviation, in the units of the difference; ``mixing_scale(mde)``
            gives the one tuned to a minimum detectable effect (about the MDE itself).
        theta0: the difference under the null hypothesis.
        alpha: the level of the test and of the confidence sequence.
        previous_p: the always-valid p-value from the previous look (1.0 at the first).

    Returns:
        The difference, the always-valid p-value, the confidence sequence and the decision. Arms
        without a variance estimate yet leave the p-value unchanged and the sequence unbounded.
    """
    if tau <= 0:
        raise ValueError("tau must be positive")
    if type(control) is not type(treatment):
        raise TypeError("control and treatment must both be Proportion or both be Mean")
    if not (usable(control) and usable(treatment)):
        return SequentialResult(_NAN, previous_p, -_INF, _INF, previous_p <= alpha)
    s2 = _plugin_variance(treatment) / treatment.n + _plugin_variance(control) / control.n
    return _sequential(treatment.mean - control.mean, s2, tau, theta0, alpha, previous_p)


def _log_ratio_sequential(control: Arm, treatment: Arm, tau: float, alpha: float) -> SequentialResult:
    """The confidence sequence for log(treatment mean / control mean), delta-method variance."""
    mc, mt = control.mean, treatment.mean
    if not (usable(control) and usable(treatment)) or not (mc > 0 and mt > 0):
        return SequentialResult(_NAN, 1.0, -_INF, _INF, False)
    s2 = _plugin_variance(treatment) / (treatment.n * mt**2) + _plugin_variance(control) / (control.n * mc**2)
    return _sequential(math.log(mt / mc), s2, tau, 0.0, alpha, 1.0)


@dataclass(frozen=True)
class NonInferiority:
    """A canary gate's answer at one look."""

    decision: Decision
    """``pass``: not worse than the margin; ``fail``: worse than the margin; ``undecided``: keep going."""
    difference: Estimate
    """Treatment minus control (absolute margin) or treatment / control - 1 (relative margin), with
    the always-valid confidence sequence as its interval."""
    margin: float
    """The tolerated worsening, as given."""


def non_inferior(
    control: Arm,
    treatment: Arm,
    margin: float,
    alpha: float = 0.05,
    *,
    higher_is_better: bool,
    relative: bool = False,
    tau: float | None = None,
) -> NonInferiority:
    """Whether treatment is no worse than control by more than ``margin``, safe to ask every interval.

    The decision reads the always-valid confidence sequence of ``sequential_test``: ``pass`` once
    the whole sequence lies on the good side of the margin (non-inferiority shown), ``fail`` once
    it lies wholly beyond it (worse than the margin, shown), ``undecided`` otherwise. Each wrong
    answer has probability at most ``alpha`` over all looks, so a controller can stop at the first
    decisive answer. (The two-sided sequence is used for both one-sided claims, which is
    conservative.)

    Examples: an error rate that may grow by at most 0.5 percentage points is
    ``non_inferior(Proportion(...), Proportion(...), 0.005, higher_is_better=False)``; a mean
    latency that may grow by at most 10 % is ``non_inferior(Mean(...), Mean(...), 0.10,
    higher_is_better=False, relative=True)``. For a tail latency, gate the Proportion of requests
    slower than a fixed threshold (a histogram bucket) with an absolute margin.

    Args:
        control: control's cumulative aggregate.
        treatment: treatment's cumulative aggregate, of the same kind.
        margin: the tolerated worsening: absolute (units of the metric) or, with ``relative``,
            a fraction of control's value (0.1 is 10 %).
        alpha: the chance of a wrong pass (or a wrong fail) over all looks.
        higher_is_better: False for errors and latency, True for conversions and accuracy.
        relative: whether ``margin`` is relative to control's value (uses the log ratio, so both
            values must be positive).
        tau: mixing scale of the mSPRT; by default ``mixing_scale(margin)`` (on the log scale for
            a relative margin), which makes the sequence sharpest at the effect of interest.

    Returns:
        The decision and the difference with its confidence sequence.
    """
    if margin <= 0 or (relative and higher_is_better and margin >= 1):
        raise ValueError("margin must be positive (and below 1 for a relative margin on a higher-is-better metric)")
    if relative:
        bound = math.log1p(margin) if not higher_is_better else math.log1p(-margin)
        scale = tau if tau is not None else mixing_scale(abs(bound), alpha)
        seq = _log_ratio_sequential(control, treatment, scale, alpha)
        lower, upper, value = seq.lower, seq.upper, seq.difference
        shown = Estimate(math.expm1(value), math.expm1(lower), math.expm1(upper))
    else:
        bound = margin if not higher_is_better else -margin
        scale = tau if tau is not None else mixing_scale(margin, alpha)
        seq = sequential_test(control, treatment, tau=scale, alpha=alpha)
        lower, upper = seq.lower, seq.upper
        shown = Estimate(seq.difference, lower, upper)
    decision: Decision
    if higher_is_better:
        # Worse means lower: pass when even the lowest plausible value is above -margin.
        decision = "pass" if lower > bound else "fail" if upper < bound else "undecided"
    else:
        decision = "pass" if upper < bound else "fail" if lower > bound else "undecided"
    return NonInferiority(decision, shown, margin)
