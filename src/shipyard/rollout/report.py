"""An experiment's report: each arm's numbers and each arm against the control (pure).

``experiment_report`` turns a traffic policy and its arms' counters (``arm_stats.read_totals``)
into what ``shipyard experiment report``, ``GET /v1/experiments/{name}`` and the per-arm metrics
show: per arm the requests, the observed against the planned share, the server-error rate, mean
and p99 latency and the mean reward, each with its interval; per non-control arm the lift over
the control on error rate, mean latency and reward, with fixed-horizon and always-valid p-values,
adjusted together by Benjamini-Hochberg; a sample-ratio-mismatch check; and how many more
requests a decision on the error rate needs, and how long that takes at the current rate.

The unit counted is the request. With sticky routing a unit of assignment is a key (a user),
and requests per key vary, so request counts spread more than independent units would: the
intervals and the SRM test then understate the noise, and their results are a first look, not
a verdict. The statistics themselves are in ``rollout/statistics.py`` and ``rollout/sequential.py``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from shipyard.rollout.arm_stats import ArmTotals
from shipyard.rollout.policy import TrafficPolicy, effective_weights
from shipyard.rollout.sequential import mixing_scale, sequential_test
from shipyard.rollout.statistics import (
    Estimate,
    Mean,
    Proportion,
    benjamini_hochberg,
    compare_means,
    compare_proportions,
    estimate,
    minimum_detectable_effect,
    required_sample_size,
    sample_ratio_mismatch,
    time_to_decision,
)

__all__ = ["ArmReport", "ExperimentReport", "MetricComparison", "Planning", "SRMCheck", "control_arm",
           "experiment_report", "planned_weights"]

SRM_ALPHA = 0.001
"""The SRM test's level: strict, since a report is read again and again."""

_NAN = math.nan


@dataclass(frozen=True)
class ArmReport:
    """One arm's numbers."""

    arm: str
    role: str
    target: str
    version: int
    n: int
    """Requests (shadow arms: copies)."""
    share: float
    """Observed: a primary arm's part of the primary requests; a shadow arm's copies per primary request."""
    planned_share: float
    """The policy's: a primary arm's normalized weight at this revision; a shadow arm's copied share."""
    errors: int
    error_rate: Estimate
    """Server errors per request, Wilson interval."""
    mean_latency: Estimate
    """Seconds, t interval."""
    p99_latency: float
    """Seconds, read from the latency buckets."""
    reward_n: int
    reward: Estimate
    """Mean reward, t interval (NaN without rewards)."""


@dataclass(frozen=True)
class MetricComparison:
    """One metric of one arm against the control."""

    arm: str
    metric: str
    """``error_rate``, ``latency`` (mean seconds) or ``reward``."""
    control: float
    treatment: float
    difference: Estimate
    """Absolute lift, arm minus control, fixed-horizon interval."""
    relative: Estimate
    """Relative lift, arm / control - 1."""
    p_value: float
    """Fixed-horizon (z-test for error rates, Welch's t for means): valid when read once, at a planned size."""
    sequential_p_value: float
    """Always-valid (mSPRT): valid however often the report is read."""
    sequence: Estimate
    """The always-valid confidence sequence of the absolute lift, at this look."""
    adjusted_p_value: float
    """Benjamini-Hochberg across every comparison of the report (fixed-horizon p-values)."""
    significant: bool
    """Rejected by Benjamini-Hochberg at ``alpha``."""


@dataclass(frozen=True)
class SRMCheck:
    """Did the primary arms get their planned shares?"""

    arms: tuple[str, ...]
    observed: tuple[int, ...]
    expected: tuple[float, ...]
    """Planned shares (normalized weights)."""
    statistic: float
    p_value: float
    mismatch: bool
    """p-value below ``SRM_ALPHA``: comparisons between the arms are suspect."""


@dataclass(frozen=True)
class Planning:
    """How far a decision on one metric of one arm is (fixed-horizon, two-sided, equal arms)."""

    arm: str
    metric: str
    baseline: float
    """The control's rate."""
    target_lift: float
    """The relative lift the plan is for (the report's ``minimum_detectable_effect``)."""
    n_needed: int | None
    """Requests per arm to detect it (None: no baseline to plan from yet)."""
    n_so_far: int
    """The smaller of the two arms' requests."""
    detectable_lift: float
    """The relative lift detectable with ``power`` at ``n_so_far`` (NaN before any)."""
    seconds_to_decision: float | None
    """At the smaller arm's current rate (0 once reached; None without a rate or a plan)."""


@dataclass(frozen=True)
class ExperimentReport:
    """Everything a report shows, for one policy revision."""

    model: str
    kind: str
    state: str
    revision: int
    step: int
    control: str
    alpha: float
    elapsed_seconds: float | None
    """The time the counters cover, when known (for rates)."""
    arms: tuple[ArmReport, ...]
    comparisons: tuple[MetricComparison, ...]
    srm: SRMCheck | None
    """None when the primary arms have no planned split to check (every weight on one arm)."""
    planning: tuple[Planning, ...]
    regret: float | None = None
    """Rewards lost against always playing the best-looking arm (``bandit.empirical_regret``: an estimate,
    high while arms have few rewards); None without rewards."""

    def arm(self, name: str) -> ArmReport:
        return next(a for a in self.arms if a.arm == name)

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data; NaN and infinite numbers become null."""
        cleaned: dict[str, Any] = _clean(asdict(self))
        return cleaned


def _clean(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


planned_weights = effective_weights
"""The primary arms' shares at this revision (``policy.effective_weights``)."""


def control_arm(policy: TrafficPolicy) -> str:
    """The arm others are compared with: a canary's stable arm, else the first primary arm."""
    if policy.canary is not None:
        return policy.canary.stable
    return policy.primaries[0].name


def experiment_report(
    policy: TrafficPolicy,
    totals: Mapping[str, ArmTotals],
    *,
    alpha: float = 0.05,
    elapsed_seconds: float | None = None,
    minimum_detectable_effect: float = 0.1,
    power: float = 0.8,
) -> ExperimentReport:
    """The report of one policy revision from its arms' counters.

    SRM is checked per policy revision, for every kind: counters are kept per revision and each
    change of weights (a split edited, a canary's step, a bandit's update) is a new revision, so
    the planned shares are fixed over the counts tested (``planned_weights``). Only primary arms
    take part; a revision whose weights put everything on one arm has nothing to check (None).

    Args:
        policy: the policy, at the revision the totals are for.
        totals: ``{arm: ArmTotals}`` (``arm_stats.read_totals``); arms without counts count as empty.
        alpha: level of every test and interval.
        elapsed_seconds: the time the totals cover, for the request rate behind ``seconds_to_decision``.
        minimum_detectable_effect: the relative lift worth detecting: the planning target, and the
            scale of the always-valid test's mixing distribution (``mixing_scale``) in each metric's
            units, taken from the control's current value.
        power: the planning target's power.

    Returns:
        The report; arms too small to estimate show NaN (null in ``to_dict``), never an exception.
    """
    control = control_arm(policy)
    planned = planned_weights(policy)
    got = {a.name: totals.get(a.name) or ArmTotals(a.name) for a in policy.arms}
    primary_n = sum(got[a.name].requests for a in policy.primaries)

    arms = []
    for a in policy.arms:
        t = got[a.name]
        arms.append(ArmReport(
            arm=a.name, role=a.role, target=a.target, version=t.version, n=t.requests,
            share=t.requests / primary_n if primary_n else _NAN,
            planned_share=planned.get(a.name, 0.0) if a.role == "primary" else min(a.weight, 1.0),
            errors=t.errors, error_rate=estimate(t.error_proportion, alpha),
            mean_latency=estimate(t.latency, alpha), p99_latency=t.latency_quantile(0.99),
            reward_n=t.reward_n, reward=estimate(t.reward, alpha),
        ))

    base = got[control]
    raw: list[tuple[str, str, Any, Any]] = []  # arm, metric, control's aggregate, arm's aggregate
    for a in policy.arms:
        if a.name == control:
            continue
        t = got[a.name]
        raw.append((a.name, "error_rate", base.error_proportion, t.error_proportion))
        raw.append((a.name, "latency", base.latency, t.latency))
        if base.reward_n and t.reward_n:  # a reward lift needs rewards on both sides
            raw.append((a.name, "reward", base.reward, t.reward))
    comparisons = _compare(raw, alpha, minimum_detectable_effect, power)

    planning = []
    for a in policy.arms:
        if a.name == control or a.role != "primary":
            continue
        t = got[a.name]
        rate = (elapsed_seconds, min(base.requests, t.requests))
        planning.append(_plan(a.name, "error_rate", base.error_rate, rate, alpha, power, minimum_detectable_effect))
        if base.reward_n and t.reward_n and _binary(base) and _binary(t):
            planning.append(_plan(a.name, "reward", base.reward.mean, (elapsed_seconds, min(base.reward_n, t.reward_n)),
                                  alpha, power, minimum_detectable_effect))

    return ExperimentReport(
        model=policy.model, kind=policy.kind, state=policy.state, revision=policy.revision, step=policy.step,
        control=control, alpha=alpha, elapsed_seconds=elapsed_seconds, arms=tuple(arms),
        comparisons=comparisons, srm=_srm(policy, planned, got), planning=tuple(planning),
        regret=_regret(policy, totals),
    )


def _regret(policy: TrafficPolicy, totals: Mapping[str, ArmTotals]) -> float | None:
    from shipyard.rollout.bandit import ArmRewards, empirical_regret

    rewards = [ArmRewards(a.name, t.reward_n, t.reward_sum, t.reward_sumsq)
               for a in policy.primaries if (t := totals.get(a.name)) is not None and t.reward_n > 0]
    return empirical_regret(rewards) if rewards else None


def _tau(control: Proportion | Mean, relative: float, alpha: float, power: float) -> float | None:
    """The mSPRT mixing scale: ``relative`` of the control's value, in the metric's units."""
    if isinstance(control, Proportion):
        scale = (control.successes + 1) / (control.n + 2)  # no errors yet still gives a scale
    elif math.isfinite(control.mean) and control.mean != 0:
        scale = abs(control.mean)
    else:  # a reward centred on 0: its spread
        scale = math.sqrt(control.variance) if math.isfinite(control.variance) else _NAN
    if not (math.isfinite(scale) and scale > 0):
        return None
    return mixing_scale(relative * scale, alpha, power)


def _compare(raw: list[tuple[str, str, Any, Any]], alpha: float, mde: float,
             power: float) -> tuple[MetricComparison, ...]:
    fixed = []
    for arm, metric, c, t in raw:
        result = compare_proportions(c, t, alpha) if isinstance(c, Proportion) else compare_means(c, t, alpha)
        tau = _tau(c, mde, alpha, power)
        if tau is None:
            seq_p, seq = 1.0, Estimate(result.difference.value, -math.inf, math.inf)
        else:
            s = sequential_test(c, t, tau=tau, alpha=alpha)
            seq_p, seq = s.p_value, Estimate(s.difference, s.lower, s.upper)
        fixed.append((arm, metric, result, seq_p, seq))
    finite = [i for i, f in enumerate(fixed) if math.isfinite(f[2].p_value)]
    fdr = benjamini_hochberg([fixed[i][2].p_value for i in finite], alpha)
    adjusted = {i: (fdr.adjusted[k], fdr.rejected[k]) for k, i in enumerate(finite)}
    out = []
    for i, (arm, metric, result, seq_p, seq) in enumerate(fixed):
        adj, rejected = adjusted.get(i, (_NAN, False))
        out.append(MetricComparison(
            arm=arm, metric=metric, control=result.control, treatment=result.treatment,
            difference=result.difference, relative=result.relative, p_value=result.p_value,
            sequential_p_value=seq_p, sequence=seq, adjusted_p_value=adj, significant=rejected,
        ))
    return tuple(out)


def _srm(policy: TrafficPolicy, planned: Mapping[str, float], got: Mapping[str, ArmTotals]) -> SRMCheck | None:
    names = tuple(a.name for a in policy.primaries)
    weights = tuple(planned[n] for n in names)
    if sum(1 for w in weights if w > 0) < 2:
        return None
    observed = tuple(got[n].requests for n in names)
    result = sample_ratio_mismatch(observed, weights, SRM_ALPHA)
    return SRMCheck(names, observed, weights, result.statistic, result.p_value, result.mismatch)


def _binary(t: ArmTotals) -> bool:
    """Rewards that look 0/1: each one its own square (sum equals sum of squares)."""
    return t.reward_sum == t.reward_sumsq and 0 <= t.reward_sum <= t.reward_n


def _plan(arm: str, metric: str, baseline: float, rate: tuple[float | None, int], alpha: float, power: float,
          lift: float) -> Planning:
    elapsed, n_so_far = rate
    if not 0 < baseline < 1 or not 0 < baseline * (1 + lift) < 1:
        return Planning(arm, metric, baseline, lift, None, n_so_far, _NAN, None)
    needed = required_sample_size(baseline, lift, alpha, power)
    detectable = minimum_detectable_effect(baseline, n_so_far, alpha, power) if n_so_far > 0 else _NAN
    seconds = None
    if elapsed is not None and elapsed > 0:
        seconds = time_to_decision(needed, n_so_far, n_so_far / elapsed)
    return Planning(arm, metric, baseline, lift, needed, n_so_far, detectable, seconds)
