"""Evaluating alert rules: snapshots and the previous state in, the new state and what changed out (pure).

Per rule and model (the incident key; a model's versions and arms are looked at
together and the worst one is the evidence):

* An evaluation *counts* only when the model's newest snapshot is newer (``at``) than the
  last one counted, so evaluating every few seconds over the same drift window or the
  same metrics does not advance a debounce by itself.
* A counted evaluation whose value crosses the threshold extends the streak; one that
  does not resets it, and resolves a firing incident (at once, as Prometheus does).
* An incident opens when the streak reaches the rule's ``for`` and no incident of the
  same rule and model resolved within ``cooldown_seconds`` before ``now``. A streak that
  reaches ``for`` during a cool-down opens the incident once the cool-down is over, if
  the condition still holds then.
* Snapshots without the signal (no labels yet, no compared window) change nothing: no
  data is neither an alarm nor a recovery.

The state is plain data (``AlertState.to_dict``/``from_dict``); the evaluator holding the
lease keeps it in memory. A new holder starts from ``AlertState.from_incidents`` (open
incidents firing, the last resolution's time for the cool-down), so nothing fires twice.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal, Protocol

from shipyard.monitoring.alerts.rules import Measurement, Rule
from shipyard.monitoring.alerts.snapshot import MonitorSnapshot

__all__ = ["AlertState", "RuleState", "Transition", "evaluate"]


@dataclass(frozen=True)
class RuleState:
    """Where one rule stands for one model."""

    streak: int = 0
    """Consecutive counted evaluations over the threshold."""
    firing: bool = False
    opened_at: float | None = None
    version: int | None = None
    """The version the open incident is about."""
    resolved_at: float | None = None
    """When the last incident resolved (the cool-down runs from it)."""
    last_at: float | None = None
    """The newest snapshot time counted so far."""


class _IncidentLike(Protocol):
    @property
    def rule(self) -> str: ...
    @property
    def model(self) -> str: ...
    @property
    def version(self) -> int | None: ...
    @property
    def state(self) -> str: ...
    @property
    def opened_at(self) -> float: ...
    @property
    def resolved_at(self) -> float | None: ...


@dataclass(frozen=True)
class AlertState:
    """Every rule's ``RuleState`` per model, keyed ``(rule, model)``."""

    entries: Mapping[tuple[str, str], RuleState] = field(default_factory=dict)

    def get(self, rule: str, model: str) -> RuleState:
        return self.entries.get((rule, model), RuleState())

    def to_dict(self) -> dict[str, Any]:
        return {"entries": [{"rule": r, "model": m, **asdict(s)} for (r, m), s in sorted(self.entries.items())]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AlertState:
        entries = {}
        for e in data.get("entries", ()):
            values = {k: v for k, v in e.items() if k not in ("rule", "model")}
            entries[(str(e["rule"]), str(e["model"]))] = RuleState(**values)
        return cls(entries)

    @classmethod
    def from_incidents(cls, incidents: Iterable[_IncidentLike], rules: Sequence[Rule] = ()) -> AlertState:
        """The state a new evaluator starts from: open incidents firing, the last resolution of each key.

        A firing incident gets a streak of its rule's ``for`` (it held that long already).
        """
        need = {r.name: r.for_ for r in rules}
        entries: dict[tuple[str, str], RuleState] = {}
        for inc in incidents:
            key = (inc.rule, inc.model)
            current = entries.get(key, RuleState())
            if inc.state == "firing":
                current = replace(current, firing=True, opened_at=inc.opened_at, version=inc.version,
                                  streak=need.get(inc.rule, 1))
            elif inc.resolved_at is not None and (current.resolved_at is None or inc.resolved_at > current.resolved_at):
                current = replace(current, resolved_at=inc.resolved_at)
            entries[key] = current
        return cls(entries)


@dataclass(frozen=True)
class Transition:
    """An incident to open or resolve."""

    kind: Literal["opened", "resolved"]
    rule: str
    model: str
    version: int | None
    at: float
    """``now`` of the evaluation."""
    value: float | None
    """The value that crossed the threshold (opened) or the latest one (resolved)."""
    evidence: dict[str, Any]
    """JSON-able: the rule, the value, the snapshot's own evidence (window, statistics), the version and arm."""


def evaluate(rules: Sequence[Rule], snapshots: Sequence[MonitorSnapshot], state: AlertState,
             now: float) -> tuple[AlertState, list[Transition]]:
    """One evaluation of every rule over every model the snapshots cover.

    Args:
        rules: the rules.
        snapshots: the latest numbers per model, version and arm.
        state: the state the previous evaluation returned.
        now: epoch seconds (opening and resolution times, the cool-down).

    Returns:
        The new state and the incidents to open or resolve, in rule order then model order.
    """
    by_model: dict[str, list[MonitorSnapshot]] = {}
    for snap in snapshots:
        by_model.setdefault(snap.model, []).append(snap)
    entries = dict(state.entries)
    transitions: list[Transition] = []
    for rule in rules:
        for model in sorted(m for m in by_model if rule.applies_to(m)):
            before = state.get(rule.name, model)
            after, transition = _step(rule, model, by_model[model], before, now)
            if after != before:
                entries[(rule.name, model)] = after
            if transition is not None:
                transitions.append(transition)
    return AlertState(entries), transitions


def _step(rule: Rule, model: str, snaps: Sequence[MonitorSnapshot], st: RuleState,
          now: float) -> tuple[RuleState, Transition | None]:
    newest = max(s.at for s in snaps)
    if st.last_at is not None and newest <= st.last_at:
        return st, None  # nothing new since the last counted evaluation
    st = replace(st, last_at=newest)
    measured = [(s, m) for s in snaps if (m := rule.measure(s)) is not None]
    if not measured:
        return st, None  # no data: neither alarm nor recovery
    over = [(s, m) for s, m in measured if rule.breached(m.value)]
    if not over:
        if not st.firing:
            return replace(st, streak=0), None
        best = _worst(rule, measured, best=True)
        evidence = {**_evidence(rule, *best, measured), "state": "resolved"}
        return (replace(st, streak=0, firing=False, resolved_at=now, opened_at=None, version=None),
                Transition("resolved", rule.name, model, st.version, now, best[1].value, evidence))
    st = replace(st, streak=st.streak + 1)
    if st.firing or st.streak < rule.for_:
        return st, None
    if st.resolved_at is not None and now - st.resolved_at < rule.cooldown_seconds:
        return st, None  # cooling down: opens later if it still holds
    snap, worst = _worst(rule, over)
    evidence = {**_evidence(rule, snap, worst, measured), "state": "firing", "evaluations": st.streak}
    return (replace(st, firing=True, opened_at=now, version=snap.version),
            Transition("opened", rule.name, model, snap.version, now, worst.value, evidence))


def _worst(rule: Rule, pairs: Sequence[tuple[MonitorSnapshot, Measurement]],
           best: bool = False) -> tuple[MonitorSnapshot, Measurement]:
    """The pair furthest over the threshold (``best``: the one furthest from it)."""
    sign = 1.0 if rule.above is not None else -1.0
    if best:
        sign = -sign
    return max(pairs, key=lambda p: (sign * p[1].value, p[0].version, p[0].arm))


def _evidence(rule: Rule, snap: MonitorSnapshot, m: Measurement,
              measured: Sequence[tuple[MonitorSnapshot, Measurement]]) -> dict[str, Any]:
    return {
        "rule": rule.name,
        "condition": rule.condition,
        "signal": rule.signal,
        "value": m.value,
        "threshold": rule.above if rule.above is not None else rule.below,
        "model": snap.model,
        "version": snap.version,
        "arm": snap.arm,
        "as_of": snap.at,
        **m.detail,
        "window": dict(snap.evidence),
        "arms": [{"version": s.version, "arm": s.arm, "value": x.value} for s, x in measured],
    }
