"""The next step of a canary rollout, from its gates (pure).

The rollout controller calls ``next_canary_step`` once per tick for every running
canary, with the per-arm totals counted since the current step started. The answer
is one of five actions:

* ``advance``   every gate passed and the step lasted its interval: the candidate's
                share moves to the next step;
* ``promote``   the same at the last step: the stable arm's alias moves to the
                candidate's version;
* ``rollback``  a gate showed the candidate worse than its margin and the plan's
                ``on_failure`` is ``rollback``: all traffic back on the stable arm;
* ``pause``     the same with ``on_failure: pause``, or the traffic split does not
                match the weights (a routing fault: no comparison can be trusted);
* ``hold``      not enough requests or time yet, or a gate is still undecided.

The comparisons use the always-valid non-inferiority test of ``rollout.statistics``
(a confidence sequence), so asking every tick does not inflate its error rates: a
gate wrongly passes (or wrongly fails) with probability at most ``alpha`` over all
the looks of one step. A failure therefore acts at once, without waiting for the
step's interval or its ``min_units``: the evidence is already valid, and waiting only
sends more users to a worse version.

Gates (settings in ``CanaryPlan.gates``, defaults in ``CanaryGates``):

``units``        each compared arm has at least ``min_units`` requests in this step.
                 Not scaled by the step's share: the tests need absolute counts, and a
                 small share simply takes longer to collect them.
``interval``     the step has lasted ``interval_seconds`` (the plan's).
``split``        the requests split between the two arms as the weights say (chi-square,
                 ``srm_alpha``); skipped for sticky routing, whose weights apply to units,
                 not requests, and when one arm has the whole traffic.
``error_rate``   the candidate's error rate exceeds the stable arm's by less than
                 ``max_error_rate_increase`` (absolute).
``latency``      the candidate's ``latency_quantile`` (p99) is below
                 ``(1 + max_latency_increase)`` times the stable arm's. Equivalently the
                 share of the candidate's requests slower than that threshold is below
                 ``1 - latency_quantile`` (1 %): that share is a proportion, tested with the
                 same always-valid machinery against a fixed 1 %. The stable arm's p99 is
                 taken as known (it has most of the traffic until the last steps).
``reward``       only when both arms have rewards (feedback labels or a metric): the
                 candidate's mean reward is lower than the stable arm's by less than
                 ``max_reward_decrease`` (absolute, or relative with ``reward_relative``).

An undecided gate holds the step. Past ``max_step_seconds`` it still holds - a
candidate the data cannot tell from the stable arm within the margins is neither
promoted nor rolled back by a machine - and the reason says so, for a person to
decide (``shipyard rollout promote`` or ``rollback``) or to widen a margin.

At a step where the candidate has all the traffic (usually the last, 1.0) the stable
arm has no requests; its totals from the previous step (``baseline``) stand in.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Literal

import numpy as np

from shipyard.errors import ConfigError
from shipyard.rollout.arm_stats import LATENCY_BOUNDS, ArmTotals
from shipyard.rollout.policy import TrafficPolicy, canary_weights
from shipyard.rollout.sequential import mixing_scale, non_inferior, sequential_test
from shipyard.rollout.statistics import (
    Mean,
    Proportion,
    sample_ratio_mismatch,
)

__all__ = ["CanaryGates", "Decision", "GateResult", "canary_gates", "next_canary_step", "slower_than"]

Action = Literal["hold", "advance", "promote", "rollback", "pause"]
Verdict = Literal["pass", "fail", "undecided", "waiting", "skipped"]

#: Units of the fixed reference arm the latency share is tested against: its variance
#: (p (1 - p) / n, about 1e-14) vanishes beside any real arm's, which makes the
#: two-sample mSPRT a one-sample test of the candidate's share against exactly 1 %.
_REFERENCE_UNITS = 10**12


@dataclass(frozen=True)
class CanaryGates:
    """A canary's gate settings: ``CanaryPlan.gates`` with defaults filled in."""

    min_units: int = 200
    """Requests each compared arm needs in the step before the step may advance."""
    max_error_rate_increase: float = 0.01
    """Tolerated rise of the error rate, absolute (0.01: one percentage point)."""
    max_latency_increase: float = 0.2
    """Tolerated rise of the latency quantile, relative to the stable arm's (0.2: 20 %)."""
    latency_quantile: float = 0.99
    """The latency quantile the latency gate compares (0.99: p99)."""
    max_reward_decrease: float = 0.01
    """Tolerated fall of the mean reward (absolute, or relative with ``reward_relative``)."""
    reward_relative: bool = False
    """Whether ``max_reward_decrease`` is a fraction of the stable arm's mean reward."""
    alpha: float = 0.05
    """Each comparison's chance of a wrong pass (or a wrong fail) over all looks of a step."""
    srm_alpha: float = 0.001
    """Level of the traffic-split check; strict, as it is asked every tick once the step could advance."""
    max_step_seconds: float | None = None
    """How long a step may stay undecided before the reason asks a person; default 6 intervals."""

    def __post_init__(self) -> None:
        if self.min_units < 1:
            raise _invalid(f"min_units must be at least 1, got {self.min_units}")
        for name in ("max_error_rate_increase", "max_latency_increase", "max_reward_decrease"):
            if not getattr(self, name) > 0:
                raise _invalid(f"{name} must be positive, got {getattr(self, name)}")
        if self.reward_relative and self.max_reward_decrease >= 1:
            raise _invalid(f"a relative max_reward_decrease must be below 1, got {self.max_reward_decrease}")
        if not 0.5 <= self.latency_quantile < 1:
            raise _invalid(f"latency_quantile must be in [0.5, 1), got {self.latency_quantile}")
        for name in ("alpha", "srm_alpha"):
            if not 0 < getattr(self, name) < 1:
                raise _invalid(f"{name} must be in (0, 1), got {getattr(self, name)}")
        if self.max_step_seconds is not None and not self.max_step_seconds > 0:
            raise _invalid(f"max_step_seconds must be positive, got {self.max_step_seconds}")


def _invalid(message: str) -> ConfigError:
    return ConfigError(f"canary gates: {message}")


def canary_gates(settings: Mapping[str, Any]) -> CanaryGates:
    """The gate settings of a plan (``CanaryPlan.gates``); ConfigError naming an unknown or bad one."""
    known = {f.name: f for f in fields(CanaryGates)}
    unknown = sorted(set(settings) - set(known))
    if unknown:
        raise _invalid(f"unknown settings {unknown} (known: {', '.join(known)})")
    values: dict[str, Any] = {}
    for name, value in settings.items():
        try:
            if name == "reward_relative":
                if not isinstance(value, bool):
                    raise TypeError("expected true or false")
                values[name] = value
            elif name == "min_units":
                values[name] = int(value)
            elif value is None and name == "max_step_seconds":
                values[name] = None
            else:
                values[name] = float(value)
        except (TypeError, ValueError) as exc:
            raise _invalid(f"{name}: {exc}") from None
    return CanaryGates(**values)


@dataclass(frozen=True)
class GateResult:
    """One gate's verdict at one look, with the numbers behind it."""

    gate: str
    """``units``, ``interval``, ``split``, ``error_rate``, ``latency`` or ``reward``."""
    verdict: Verdict
    """``pass``/``fail``/``undecided`` for comparisons, ``waiting`` for units and time, ``skipped``."""
    detail: str
    """The numbers in words, as ``shipyard rollout status`` shows them."""
    values: Mapping[str, float]
    """The same numbers by name (rates, bounds of the confidence sequence, margins, counts)."""

    def __str__(self) -> str:
        return f"{self.gate} {self.verdict}: {self.detail}"


@dataclass(frozen=True)
class Decision:
    """What to do with a canary now, why, and every gate's verdict."""

    action: Action
    reason: str
    gates: tuple[GateResult, ...]
    note: str = ""
    """A short reason that stays the same from look to look, for the policy to record while it holds
    (set once a step is undecided past ``max_step_seconds``); empty when there is nothing to record."""


def next_canary_step(
    policy: TrafficPolicy,
    totals_of_this_step: Mapping[str, ArmTotals],
    step_started_at: float,
    now: float,
    *,
    baseline: ArmTotals | None = None,
) -> Decision:
    """Decide a running canary's next move from the totals of its current step.

    Args:
        policy: a canary policy (``kind == "canary"``).
        totals_of_this_step: per arm name, the totals counted since the current step started.
        step_started_at: when the current step started (epoch seconds).
        now: the time of this look, on the same clock.
        baseline: the stable arm's totals of the previous step, compared against when this
            step sends the stable arm nothing (a last step at 1.0).

    Returns:
        The action, its reason (what ``TrafficPolicy.reason`` records) and every gate's result.

    Raises:
        ConfigError: the plan's gate settings are invalid.
        ValueError: the policy is not a canary.
    """
    plan = policy.canary
    if policy.kind != "canary" or plan is None:
        raise ValueError(f"{policy.model}: next_canary_step needs a canary policy, got kind {policy.kind!r}")
    gates = canary_gates(plan.gates)
    step_name = f"step {policy.step + 1}/{len(plan.steps)}"
    if policy.state != "running":
        return Decision("hold", f"{step_name}: the canary is {policy.state}", ())

    weights = canary_weights(policy)
    candidate = totals_of_this_step.get(plan.candidate)
    stable = totals_of_this_step.get(plan.stable)
    control = stable if weights[plan.stable] > 0 else baseline
    elapsed = now - step_started_at

    results = [
        _units_gate(gates, candidate, control),
        _interval_gate(plan.interval_seconds, elapsed),
    ]
    ready = all(r.verdict == "pass" for r in results)
    split = _split_gate(policy, gates, weights, candidate, stable, ready)
    comparisons = [_error_gate(gates, control, candidate), _latency_gate(gates, control, candidate),
                   _reward_gate(gates, control, candidate)]
    results += [split, *comparisons]

    failed = [r for r in comparisons if r.verdict == "fail"]
    if failed:
        why = "; ".join(str(r) for r in failed)
        return Decision(plan.on_failure, f"{step_name} failed: {why}", tuple(results))  # type: ignore[arg-type]
    if split.verdict == "fail":
        return Decision("pause", f"{step_name} paused, the arms cannot be compared: {split}", tuple(results))
    if not ready:
        why = "; ".join(str(r) for r in results[:2] if r.verdict != "pass")
        return Decision("hold", f"{step_name} waiting: {why}", tuple(results))
    undecided = [r for r in comparisons if r.verdict == "undecided"]
    if undecided:
        limit = gates.max_step_seconds if gates.max_step_seconds is not None else 6 * plan.interval_seconds
        why = "; ".join(str(r) for r in undecided)
        if elapsed > limit:
            note = (f"{step_name} undecided past max_step_seconds ({limit:g}s): holding; promote or roll "
                    "back by hand, or widen a margin")
            return Decision("hold", f"{note}: {why}", tuple(results), note)
        return Decision("hold", f"{step_name} undecided: {why}", tuple(results))
    passed = ", ".join(r.gate for r in comparisons if r.verdict == "pass")
    if policy.step >= len(plan.steps) - 1:
        return Decision("promote", f"{step_name} passed ({passed}): promoted", tuple(results))
    return Decision("advance", f"{step_name} passed ({passed}): on to {plan.steps[policy.step + 1]:.0%}",
                    tuple(results))


# -- the gates ------------------------------------------------------------------------------


def _units_gate(gates: CanaryGates, candidate: ArmTotals | None, control: ArmTotals | None) -> GateResult:
    n_candidate = candidate.requests if candidate is not None else 0
    n_control = control.requests if control is not None else 0
    values = {"candidate": float(n_candidate), "stable": float(n_control), "min_units": float(gates.min_units)}
    detail = f"{n_candidate} candidate and {n_control} stable requests, {gates.min_units} needed in each"
    verdict: Verdict = "pass" if min(n_candidate, n_control) >= gates.min_units else "waiting"
    return GateResult("units", verdict, detail, values)


def _interval_gate(interval: float, elapsed: float) -> GateResult:
    verdict: Verdict = "pass" if elapsed >= interval else "waiting"
    return GateResult("interval", verdict, f"{elapsed:.0f}s of {interval:.0f}s",
                      {"elapsed_seconds": elapsed, "interval_seconds": interval})


def _split_gate(policy: TrafficPolicy, gates: CanaryGates, weights: Mapping[str, float],
                candidate: ArmTotals | None, stable: ArmTotals | None, ready: bool) -> GateResult:
    plan = policy.canary
    assert plan is not None
    w_stable, w_candidate = weights[plan.stable], weights[plan.candidate]
    if policy.sticky is not None:
        return GateResult("split", "skipped", "sticky routing splits units, not requests", {})
    if w_stable <= 0 or w_candidate <= 0:
        return GateResult("split", "skipped", "one arm has all the traffic", {})
    if not ready:
        return GateResult("split", "waiting", "checked once the step could advance", {})
    counts = [stable.requests if stable is not None else 0, candidate.requests if candidate is not None else 0]
    srm = sample_ratio_mismatch(counts, [w_stable, w_candidate], alpha=gates.srm_alpha)
    total = sum(counts)
    values = {"stable": float(counts[0]), "candidate": float(counts[1]), "expected_share": w_candidate,
              "p_value": srm.p_value, "alpha": gates.srm_alpha}
    detail = (f"candidate had {counts[1] / total:.2%} of {total} requests, {w_candidate:.2%} expected "
              f"(chi-square p = {srm.p_value:.3g})")
    return GateResult("split", "fail" if srm.mismatch else "pass", detail, values)


def _error_gate(gates: CanaryGates, control: ArmTotals | None, candidate: ArmTotals | None) -> GateResult:
    if control is None or candidate is None or control.requests == 0 or candidate.requests == 0:
        return GateResult("error_rate", "undecided", "no requests to compare yet", {})
    stable_p = Proportion(control.errors, control.requests)
    candidate_p = Proportion(candidate.errors, candidate.requests)
    result = non_inferior(stable_p, candidate_p, gates.max_error_rate_increase, gates.alpha, higher_is_better=False)
    d = result.difference
    values = {"stable": stable_p.mean, "candidate": candidate_p.mean, "difference": d.value,
              "lower": d.lower, "upper": d.upper, "margin": gates.max_error_rate_increase}
    detail = (f"errors {candidate_p.mean:.3%} vs {stable_p.mean:.3%}, difference {d.value:+.3%} "
              f"in [{d.lower:+.3%}, {d.upper:+.3%}], margin {gates.max_error_rate_increase:+.3%}")
    return GateResult("error_rate", result.decision, detail, values)


def _latency_gate(gates: CanaryGates, control: ArmTotals | None, candidate: ArmTotals | None) -> GateResult:
    q = gates.latency_quantile
    label = f"p{100 * q:g}"
    if control is None or candidate is None or control.requests < gates.min_units or candidate.requests == 0:
        return GateResult("latency", "undecided", f"too few requests for the stable {label} yet", {})
    stable_q = control.latency_quantile(q)
    threshold = (1 + gates.max_latency_increase) * stable_q
    tail = 1 - q
    slow = min(round(slower_than(candidate, threshold)), candidate.requests)
    reference = Proportion(round(tail * _REFERENCE_UNITS), _REFERENCE_UNITS)
    # The share of slow requests against a fixed 1 %, with the mixing scale tuned to a
    # doubling of that share: the smallest tail shift worth acting on.
    seq = sequential_test(reference, Proportion(slow, candidate.requests), tau=mixing_scale(tail, gates.alpha),
                          alpha=gates.alpha)
    share = slow / candidate.requests
    verdict: Verdict = "pass" if seq.upper < 0 else "fail" if seq.lower > 0 else "undecided"
    values = {"stable_quantile": stable_q, "threshold": threshold, "candidate_quantile": candidate.latency_quantile(q),
              "slow_share": share, "lower": tail + seq.lower, "upper": tail + seq.upper, "tail": tail}
    lower, upper = tail + seq.lower, tail + seq.upper
    detail = (f"{label} {1000 * values['candidate_quantile']:.1f} ms vs {1000 * stable_q:.1f} ms; "
              f"{share:.2%} of candidate requests slower than {1000 * threshold:.1f} ms "
              f"(+{gates.max_latency_increase:.0%}), in [{max(lower, 0):.2%}, {upper:.2%}], limit {tail:.0%}")
    return GateResult("latency", verdict, detail, values)


def _reward_gate(gates: CanaryGates, control: ArmTotals | None, candidate: ArmTotals | None) -> GateResult:
    if control is None or candidate is None or control.reward_n == 0 and candidate.reward_n == 0:
        return GateResult("reward", "skipped", "no rewards recorded", {})
    stable_m = Mean.from_sums(control.reward_n, control.reward_sum, control.reward_sumsq)
    candidate_m = Mean.from_sums(candidate.reward_n, candidate.reward_sum, candidate.reward_sumsq)
    margin = gates.max_reward_decrease
    if gates.reward_relative and not (stable_m.mean > 0 and candidate_m.mean > 0):
        return GateResult("reward", "undecided", "a relative margin needs positive mean rewards in both arms",
                          {"stable": stable_m.mean, "candidate": candidate_m.mean})
    result = non_inferior(stable_m, candidate_m, margin, gates.alpha, higher_is_better=True,
                          relative=gates.reward_relative)
    d = result.difference
    values = {"stable": stable_m.mean, "candidate": candidate_m.mean, "stable_n": float(stable_m.n),
              "candidate_n": float(candidate_m.n), "difference": d.value, "lower": d.lower, "upper": d.upper,
              "margin": margin}
    unit = " (relative)" if gates.reward_relative else ""
    detail = (f"mean reward {_g(candidate_m.mean)} ({candidate_m.n}) vs {_g(stable_m.mean)} ({stable_m.n}), "
              f"difference {_g(d.value)} in [{_g(d.lower)}, {_g(d.upper)}], margin -{margin:g}{unit}")
    return GateResult("reward", result.decision, detail, values)


def _g(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x:.4g}"


def slower_than(totals: ArmTotals, seconds: float) -> float:
    """How many of an arm's requests took longer than ``seconds``, from its latency buckets.

    Inside the bucket that holds ``seconds`` the requests are taken as spread evenly, the
    same reading ``ArmTotals.latency_quantile`` makes; the open last bucket (beyond the
    last finite bound) counts as slower whatever ``seconds`` is.
    """
    counts = np.asarray(totals.latency_buckets, dtype=float)
    upper = np.asarray(LATENCY_BOUNDS, dtype=float)
    lower = np.concatenate(([0.0], upper[:-1]))
    finite = np.isfinite(upper)
    above = np.ones_like(upper)
    above[finite] = np.clip((upper[finite] - seconds) / (upper[finite] - lower[finite]), 0.0, 1.0)
    return float(counts @ above)
