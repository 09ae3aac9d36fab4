"""Traffic policies: which arm of a served name a request goes to (pure).

A policy spreads one served name over several *arms*. An arm is an alias
(``champion``, ``challenger``) or a fixed version of the model, with a weight.
Primary arms share the traffic by weight: exactly one answers each request.
Shadow arms get a copy of a share of the requests; their answers are logged,
never returned.

Sticky routing hashes a unit key (a header's value or an input field's) with
the policy's salt, so one key gets one arm on every worker, every replica and
after restarts. The choice is a weighted rendezvous: each arm draws
``-ln(u_arm) / weight`` from the key's hash with the arm's name, and the
smallest wins. Each arm wins with probability proportional to its weight, and
when one arm's weight rises while the others' fall (a canary's ramp, a split
moved from 90/10 to 80/20), no key already in that arm leaves it. Adding or
removing an arm only moves keys to or from that arm. Without a key, a uniform
random number picks the arm by cumulative weight.

``kind`` says who changes the weights: ``split`` (people), ``canary`` (the
controller, step by step through ``canary.steps``) or ``bandit`` (the
controller, from rewards). The policy itself is plain data, stored as JSON in
the registry database (``rollout/store.py``) so every replica reads the same one.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from shipyard.errors import ConfigError
from shipyard.types import ModelRef, is_version_number

Kind = Literal["split", "canary", "bandit"]
KINDS: tuple[str, ...] = ("split", "canary", "bandit")
Role = Literal["primary", "shadow"]
State = Literal["running", "paused", "promoted", "aborted", "rolled_back"]
STATES: tuple[str, ...] = ("running", "paused", "promoted", "aborted", "rolled_back")
ON_FAILURE: tuple[str, ...] = ("rollback", "pause")


def _invalid(message: str) -> ConfigError:
    return ConfigError(f"traffic: {message}")


@dataclass(frozen=True)
class Arm:
    """One place the traffic of a served name can go."""

    name: str
    """What metrics, events and reports call it (``champion``, ``challenger``, ``v3``)."""
    target: str
    """An alias of the model or a version number: what the arm serves."""
    weight: float
    """Primary arms: the share of requests (weights are normalized); shadow arms: the share copied, 0..1."""
    role: Role = "primary"

    def ref(self, model: str) -> ModelRef:
        if is_version_number(self.target):
            return ModelRef(model, version=int(self.target))
        return ModelRef(model, alias=self.target)


@dataclass(frozen=True)
class CanaryPlan:
    """How a canary ramps: its share at each step, how long a step lasts, what decides and what failure does."""

    stable: str
    """The arm that keeps the rest of the traffic and is rolled back to."""
    candidate: str
    """The arm whose share ramps up; promotion moves the stable arm's alias to its version."""
    steps: tuple[float, ...] = (0.01, 0.05, 0.2, 0.5, 1.0)
    """The candidate's share at each step (rising, the last one usually 1.0)."""
    interval_seconds: float = 300.0
    """The least time a step lasts before its gates may advance it."""
    gates: Mapping[str, Any] = field(default_factory=dict)
    """Gate settings (``max_error_rate_increase``, ``max_latency_increase``, ``min_units``, ...)."""
    on_failure: str = "rollback"
    """``rollback`` (all traffic back on the stable arm) or ``pause`` (hold the step, for a person)."""


@dataclass(frozen=True)
class TrafficPolicy:
    """How one served name's traffic spreads over its arms."""

    model: str
    arms: tuple[Arm, ...]
    """Primary arms first, in a fixed order, then shadow arms."""
    kind: Kind = "split"
    sticky: str | None = None
    """``header:NAME`` or ``field:NAME``: the unit key sticky routing hashes; None: each request at random."""
    salt: str = ""
    """Mixed into the sticky hash: a new experiment (new salt) reshuffles units, a weight change does not."""
    revision: int = 0
    """Bumped by the store on every change; events and statistics are kept per revision."""
    state: State = "running"
    step: int = 0
    """The canary's current step (an index into ``canary.steps``)."""
    canary: CanaryPlan | None = None
    bandit: Mapping[str, Any] | None = None
    """Bandit settings (algorithm, reward, floor, cadence_seconds), read by the controller."""
    reason: str = ""
    """Why the policy is in its state (a gate's verdict, a person's note)."""
    reward: str | None = None
    """Where the arms' rewards come from: ``output:NAME`` (the mean of each prediction's output NAME: a
    business metric of the prediction itself) or ``feedback`` (labels sent later); None: no rewards."""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise _invalid(f"kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.state not in STATES:
            raise _invalid(f"state must be one of {', '.join(STATES)}, got {self.state!r}")
        names = [a.name for a in self.arms]
        if len(set(names)) != len(names):
            raise _invalid(f"arm names must be unique, got {names}")
        if not self.primaries:
            raise _invalid(f"{self.model} needs at least one primary arm")
        for arm in self.arms:
            if not arm.name or not arm.target:
                raise _invalid("every arm needs a name and a target (an alias or a version)")
            if not (arm.weight >= 0 and math.isfinite(arm.weight)):
                raise _invalid(f"arm {arm.name}: weight must be a finite number >= 0, got {arm.weight}")
            if arm.role == "shadow" and arm.weight > 1:
                raise _invalid(f"shadow arm {arm.name}: the share copied is 0..1 as a weight (0..100 as a percent), "
                               f"got {arm.weight:g}")
            if arm.role not in ("primary", "shadow"):
                raise _invalid(f"arm {arm.name}: role must be primary or shadow, got {arm.role!r}")
        if self.state == "running" and sum(a.weight for a in self.primaries) <= 0:
            raise _invalid(f"{self.model}: the primary arms' weights add up to 0")
        if self.sticky is not None and not self.sticky.startswith(("header:", "field:")):
            raise _invalid(f"sticky must be 'header:NAME' or 'field:NAME', got {self.sticky!r}")
        if self.kind == "canary":
            if self.canary is None:
                raise _invalid(f"{self.model}: a canary needs canary: stable, candidate and steps")
            _check_canary(self.canary, names)
            if is_version_number(self.arm(self.canary.stable).target):
                raise _invalid(f"canary: the stable arm {self.canary.stable} must name an alias (promotion "
                               "moves it to the candidate's version), not a fixed version")
        if self.reward is not None and not (self.reward == "feedback" or
                                            (self.reward.startswith("output:") and len(self.reward) > 7)):
            raise _invalid(f"reward must be 'output:NAME' or 'feedback', got {self.reward!r}")
        if self.kind == "bandit" and len(self.primaries) < 2:
            raise _invalid(f"{self.model}: a bandit needs at least two primary arms")

    @property
    def primaries(self) -> tuple[Arm, ...]:
        return tuple(a for a in self.arms if a.role == "primary")

    @property
    def shadows(self) -> tuple[Arm, ...]:
        return tuple(a for a in self.arms if a.role == "shadow")

    def arm(self, name: str) -> Arm:
        for a in self.arms:
            if a.name == name:
                return a
        raise _invalid(f"{self.model} has no arm {name!r} (arms: {', '.join(a.name for a in self.arms)})")

    def with_weights(self, weights: Mapping[str, float]) -> TrafficPolicy:
        """The same policy with some arms' weights replaced."""
        return replace(self, arms=tuple(replace(a, weight=float(weights.get(a.name, a.weight))) for a in self.arms))

    @property
    def sticky_header(self) -> str | None:
        return self.sticky[len("header:"):].lower() if self.sticky and self.sticky.startswith("header:") else None

    @property
    def sticky_field(self) -> str | None:
        return self.sticky[len("field:"):] if self.sticky and self.sticky.startswith("field:") else None

    # -- JSON (what the store keeps) ------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "model": self.model, "kind": self.kind, "state": self.state, "step": self.step,
            "revision": self.revision, "salt": self.salt, "sticky": self.sticky, "reason": self.reason,
            "reward": self.reward,
            "arms": [{"name": a.name, "target": a.target, "weight": a.weight, "role": a.role} for a in self.arms],
        }
        if self.canary is not None:
            c = self.canary
            out["canary"] = {"stable": c.stable, "candidate": c.candidate, "steps": list(c.steps),
                             "interval_seconds": c.interval_seconds, "gates": dict(c.gates),
                             "on_failure": c.on_failure}
        if self.bandit is not None:
            out["bandit"] = dict(self.bandit)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrafficPolicy:
        """A policy from its JSON form or a ``traffic:`` block; ConfigError naming what is wrong."""
        if not isinstance(data, Mapping):
            raise _invalid(f"expected a mapping, got {type(data).__name__}")
        known = {"model", "kind", "state", "step", "revision", "salt", "sticky", "reason", "arms", "canary",
                 "bandit", "shadow", "reward"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise _invalid(f"unknown keys {unknown} (known: {', '.join(sorted(known))})")
        model = str(data.get("model") or "")
        if not model:
            raise _invalid("model is required")
        arms = [_arm(a, "primary") for a in _list(data.get("arms"), "arms")]
        arms += [_arm(a, "shadow") for a in _list(data.get("shadow"), "shadow")]
        canary = data.get("canary")
        plan = None
        if canary is not None:
            if not isinstance(canary, Mapping):
                raise _invalid("canary must be a mapping")
            try:
                plan = CanaryPlan(
                    stable=str(canary["stable"]), candidate=str(canary["candidate"]),
                    steps=tuple(float(s) for s in canary.get("steps", CanaryPlan.steps)),
                    interval_seconds=float(canary.get("interval_seconds", CanaryPlan.interval_seconds)),
                    gates=dict(canary.get("gates") or {}),
                    on_failure=str(canary.get("on_failure", "rollback")),
                )
            except KeyError as exc:
                raise _invalid(f"canary needs {exc.args[0]}") from None
            except (TypeError, ValueError) as exc:
                raise _invalid(f"canary: {exc}") from None
        bandit = data.get("bandit")
        if bandit is not None and not isinstance(bandit, Mapping):
            raise _invalid("bandit must be a mapping")
        kind = str(data.get("kind") or ("canary" if plan else "bandit" if bandit else "split"))
        try:
            return cls(
                model=model, arms=tuple(arms), kind=kind,  # type: ignore[arg-type]
                sticky=data.get("sticky"), salt=str(data.get("salt") or model),
                revision=int(data.get("revision") or 0), state=str(data.get("state") or "running"),  # type: ignore[arg-type]
                step=int(data.get("step") or 0), canary=plan, bandit=dict(bandit) if bandit else None,
                reason=str(data.get("reason") or ""), reward=data.get("reward"),
            )
        except (TypeError, ValueError) as exc:
            if isinstance(exc, ConfigError):
                raise
            raise _invalid(str(exc)) from None


def _list(value: Any, what: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, Sequence) or isinstance(value, str | bytes):
        raise _invalid(f"{what} must be a list")
    return list(value)


def _arm(data: Any, role: Role) -> Arm:
    """An arm from ``{name, target|alias|version, weight|percent}``; a bare string is an alias at weight 1."""
    if isinstance(data, str):
        return Arm(data, data, 1.0, role)
    if not isinstance(data, Mapping):
        raise _invalid(f"an arm must be a mapping or an alias, got {data!r}")
    targets = [k for k in ("target", "alias", "version") if data.get(k) is not None]
    if len(targets) != 1:
        raise _invalid(f"arm {data!r}: give exactly one of target, alias or version")
    target = str(data[targets[0]])
    name = str(data.get("name") or target)
    if "percent" in data and "weight" in data:
        raise _invalid(f"arm {name}: give weight or percent, not both")
    try:
        weight = float(data["percent"]) / 100 if "percent" in data else float(data.get("weight", 1.0))
    except (TypeError, ValueError):
        raise _invalid(f"arm {name}: weight must be a number") from None
    extra = set(data) - {"name", "target", "alias", "version", "weight", "percent", "role"}
    if extra:
        raise _invalid(f"arm {name}: unknown keys {sorted(extra)}")
    return Arm(name, target, weight, data.get("role", role))  # stored policies keep shadows among arms


def _check_canary(plan: CanaryPlan, arms: list[str]) -> None:
    for which in (plan.stable, plan.candidate):
        if which not in arms:
            raise _invalid(f"canary arm {which!r} is not one of the arms {arms}")
    if plan.stable == plan.candidate:
        raise _invalid("canary: stable and candidate must be different arms")
    if not plan.steps or any(not 0 < s <= 1 for s in plan.steps):
        raise _invalid(f"canary steps are shares in (0, 1], got {list(plan.steps)}")
    if any(b <= a for a, b in zip(plan.steps, plan.steps[1:], strict=False)):
        raise _invalid(f"canary steps must rise, got {list(plan.steps)}")
    if plan.interval_seconds <= 0:
        raise _invalid(f"canary interval_seconds must be positive, got {plan.interval_seconds}")
    if plan.on_failure not in ON_FAILURE:
        raise _invalid(f"canary on_failure must be one of {', '.join(ON_FAILURE)}, got {plan.on_failure!r}")


def same_spec(a: TrafficPolicy, b: TrafficPolicy) -> bool:
    """Whether two policies declare the same experiment: what a person writes, not where it has got to.

    Revision, state, step and reason are progress; so are the weights of a canary or a bandit,
    which the controller moves.
    """
    def spec(p: TrafficPolicy) -> dict[str, Any]:
        d = p.to_dict()
        for progress in ("revision", "state", "step", "reason"):
            d.pop(progress)
        if p.kind in ("canary", "bandit"):
            d["arms"] = [{**arm, "weight": None} for arm in d["arms"]]
        return d

    return spec(a) == spec(b)


def canary_weights(policy: TrafficPolicy) -> dict[str, float]:
    """The primary weights a canary's current step means (the candidate's share, the rest on stable)."""
    plan = policy.canary
    assert plan is not None
    if policy.state in ("aborted", "rolled_back", "promoted"):
        share = 0.0  # promoted: the stable arm's alias was moved to the candidate's version
    else:
        share = plan.steps[min(policy.step, len(plan.steps) - 1)]
    weights = {a.name: 0.0 for a in policy.primaries}
    weights[plan.candidate] = share
    weights[plan.stable] = 1.0 - share
    return weights


def effective_weights(policy: TrafficPolicy) -> dict[str, float]:
    """The primary arms' shares as the router applies them now, normalized.

    A canary's come from its step; an aborted, rolled-back or promoted split or bandit sends
    everything to its first arm (promoted: that arm's alias was moved to the winner). Every
    change of weights is a new revision, so within one revision these shares are fixed.
    """
    if policy.kind == "canary":
        weights = canary_weights(policy)
    elif policy.state in ("aborted", "rolled_back", "promoted"):
        weights = {a.name: 1.0 if i == 0 else 0.0 for i, a in enumerate(policy.primaries)}
    else:
        weights = {a.name: a.weight for a in policy.primaries}
    total = sum(weights.values())
    return {k: (v / total if total > 0 else 0.0) for k, v in weights.items()}


# -- choosing an arm ----------------------------------------------------------------------------


def unit_hash(salt: str, arm: str, key: str) -> float:
    """A uniform number in (0, 1) from ``(salt, arm, key)``: the same on every process and machine."""
    digest = hashlib.blake2b(f"{salt}\x1f{arm}\x1f{key}".encode(), digest_size=8).digest()
    return (int.from_bytes(digest, "big") + 0.5) / 2.0**64


def choose(arms: Sequence[Arm], key: str | None, u: float, salt: str = "") -> Arm:
    """The primary arm of one request: sticky by ``key`` (weighted rendezvous), else by ``u`` in [0, 1).

    Arms of weight 0 never win; at least one weight must be positive.
    """
    if key is None:
        total = sum(a.weight for a in arms)
        point = u * total
        for arm in arms:
            if arm.weight > 0:
                if point < arm.weight:
                    return arm
                point -= arm.weight
        return next(a for a in reversed(arms) if a.weight > 0)  # rounding at the top end
    best, best_score = None, math.inf
    for arm in arms:
        if arm.weight <= 0:
            continue
        score = -math.log(unit_hash(salt, arm.name, key)) / arm.weight
        if score < best_score:
            best, best_score = arm, score
    if best is None:
        raise ValueError("no arm has a positive weight")
    return best


def copied(arm: Arm, key: str | None, u: float, salt: str = "") -> bool:
    """Whether a request is copied to a shadow arm: sticky keys are copied consistently, others at random."""
    if arm.weight >= 1:
        return True
    if key is not None:
        return unit_hash(salt, arm.name, key) < arm.weight
    return u < arm.weight
