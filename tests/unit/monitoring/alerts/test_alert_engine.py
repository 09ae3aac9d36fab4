"""The alert engine: debounce, cool-down, resolution, no data, and a new evaluator that fires nothing twice."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import pytest

from shipyard.monitoring.alerts import AlertState, MonitorSnapshot, Rule, RuleSet, Transition, evaluate

ACCURACY_DROP = {"name": "accuracy-drop", "signal": "realized_drop", "metric": "accuracy", "above": 0.03, "for": 3}


def rules(*raw: dict[str, object]) -> tuple[Rule, ...]:
    return RuleSet.parse(list(raw)).rules


def accuracy(at: float, value: float, *, model: str = "fraud", version: int = 1, arm: str = "champion",
             registered: float = 0.90) -> MonitorSnapshot:
    return MonitorSnapshot(model, version, arm, at, realized={"accuracy": value}, registered={"accuracy": registered},
                           evidence={"window": [at - 60, at], "labelled": 500})


def run(rule_set: Sequence[Rule], series: Sequence[Sequence[MonitorSnapshot]],
        state: AlertState | None = None) -> tuple[AlertState, list[Transition]]:
    """Evaluate each list of snapshots in turn, ``now`` one minute apart; all transitions."""
    state = state or AlertState()
    out: list[Transition] = []
    for i, snaps in enumerate(series):
        state, transitions = evaluate(rule_set, snaps, state, now=1_000.0 + 60 * i)
        out += transitions
    return state, out


def test_a_sustained_five_point_accuracy_drop_fires_exactly_once() -> None:
    values = [0.90, 0.90] + [0.85] * 20
    _, transitions = run(rules(ACCURACY_DROP), [[accuracy(float(i), v)] for i, v in enumerate(values)])
    assert [t.kind for t in transitions] == ["opened"]
    opened = transitions[0]
    assert (opened.rule, opened.model, opened.version) == ("accuracy-drop", "fraud", 1)
    assert opened.at == 1_000.0 + 60 * 4  # the third evaluation of the drop
    assert opened.value == pytest.approx(0.05)
    assert opened.evidence["realized"] == 0.85 and opened.evidence["registered"] == 0.90
    assert opened.evidence["window"] == {"window": [-56.0, 4.0], "labelled": 500}  # the snapshot's own evidence
    assert opened.evidence["evaluations"] == 3
    json.dumps(opened.evidence)  # JSON-able, for the table and the notifiers


def test_a_one_point_blip_does_not_fire() -> None:
    values = [0.90, 0.89, 0.89, 0.89, 0.89, 0.90, 0.89, 0.89]
    _, transitions = run(rules(ACCURACY_DROP), [[accuracy(float(i), v)] for i, v in enumerate(values)])
    assert transitions == []


def test_a_drop_shorter_than_for_does_not_fire_and_a_recovery_resets_the_count() -> None:
    values = [0.85, 0.85, 0.90, 0.85, 0.85, 0.90, 0.85]
    _, transitions = run(rules(ACCURACY_DROP), [[accuracy(float(i), v)] for i, v in enumerate(values)])
    assert transitions == []


def test_evaluating_the_same_snapshot_again_does_not_count_towards_for() -> None:
    same = accuracy(7.0, 0.80)
    _, transitions = run(rules(ACCURACY_DROP), [[same]] * 10)
    assert transitions == []
    _, transitions = run(rules(ACCURACY_DROP), [[accuracy(7.0 + i, 0.80)] for i in range(3)])
    assert [t.kind for t in transitions] == ["opened"]


def test_an_incident_resolves_when_the_condition_clears_and_can_fire_again() -> None:
    values = [0.85, 0.85, 0.85, 0.90, 0.85, 0.85, 0.85]
    _, transitions = run(rules(ACCURACY_DROP), [[accuracy(float(i), v)] for i, v in enumerate(values)])
    assert [t.kind for t in transitions] == ["opened", "resolved", "opened"]
    assert transitions[1].evidence["state"] == "resolved" and transitions[1].value == pytest.approx(0.0)


def test_no_new_incident_within_the_cool_down_after_a_resolution() -> None:
    rule = rules({**ACCURACY_DROP, "for": 1, "cooldown_seconds": 300})  # evaluations are 60 s apart
    values = [0.85, 0.90, 0.85, 0.85, 0.85, 0.85, 0.85, 0.85]
    _, transitions = run(rule, [[accuracy(float(i), v)] for i, v in enumerate(values)])
    assert [(t.kind, t.at) for t in transitions] == [
        ("opened", 1_000.0), ("resolved", 1_060.0), ("opened", 1_060.0 + 300)]


def test_missing_labels_are_neither_an_alarm_nor_a_recovery() -> None:
    no_labels = MonitorSnapshot("fraud", 1, "champion", 0.0, registered={"accuracy": 0.9})
    series = [[accuracy(0.0, 0.85)], [accuracy(1.0, 0.85)], [accuracy(2.0, 0.85)]]
    series += [[MonitorSnapshot("fraud", 1, "champion", 3.0 + i, registered={"accuracy": 0.9})] for i in range(5)]
    state, transitions = run(rules(ACCURACY_DROP), series)
    assert [t.kind for t in transitions] == ["opened"]
    assert state.get("accuracy-drop", "fraud").firing
    _, transitions = run(rules(ACCURACY_DROP), [[no_labels]] * 3)
    assert transitions == []


def test_a_new_evaluator_starting_from_the_open_incidents_fires_nothing_twice() -> None:
    @dataclass
    class Row:
        rule: str
        model: str
        version: int | None
        state: str
        opened_at: float
        resolved_at: float | None

    rule = rules({**ACCURACY_DROP, "cooldown_seconds": 10_000})
    state = AlertState.from_incidents([Row("accuracy-drop", "fraud", 1, "firing", 5.0, None),
                                       Row("accuracy-drop", "other", 2, "resolved", 5.0, 990.0)], rule)
    drop = [[accuracy(float(i), 0.85), accuracy(float(i), 0.85, model="other")] for i in range(10)]
    _, transitions = run(rule, drop, state)
    assert transitions == []  # fraud is still firing; other is cooling down


def test_the_state_round_trips_through_json() -> None:
    state, _ = run(rules(ACCURACY_DROP), [[accuracy(float(i), 0.85)] for i in range(4)])
    again = AlertState.from_dict(json.loads(json.dumps(state.to_dict())))
    assert again == state


def test_the_worst_arm_is_the_evidence_and_every_arm_is_listed() -> None:
    rule = rules({"name": "drift", "signal": "drift_share", "above": 0.3})
    snaps = [MonitorSnapshot("fraud", 1, "champion", 1.0, drift_share=0.1, drift_rows=2000),
             MonitorSnapshot("fraud", 2, "canary", 1.0, drift_share=0.6, drift_rows=2000,
                             drifted_features=("x1", "x2"), evidence={"start": 0, "end": 60})]
    _, transitions = run(rule, [snaps])
    [opened] = transitions
    assert (opened.version, opened.evidence["arm"], opened.value) == (2, "canary", 0.6)
    assert opened.evidence["drifted_features"] == ["x1", "x2"]
    assert opened.evidence["window"] == {"start": 0, "end": 60}
    assert [a["arm"] for a in opened.evidence["arms"]] == ["champion", "canary"]


def test_rules_apply_to_their_model_or_every_model() -> None:
    rule_set = rules({"name": "any", "signal": "label_coverage", "below": 0.1},
                     {"name": "only-b", "model": "b", "signal": "label_coverage", "below": 0.1})
    snaps = [MonitorSnapshot(m, 1, "x", 1.0, label_coverage=0.01) for m in ("a", "b")]
    _, transitions = run(rule_set, [snaps])
    assert sorted((t.rule, t.model) for t in transitions) == [("any", "a"), ("any", "b"), ("only-b", "b")]


def test_signals_read_their_own_numbers() -> None:
    snap = MonitorSnapshot("m", 1, "a", 1.0, feature_effects={"x1": 0.05, "x2": 0.4},
                           quality_rates={"nulls": 0.2, "unseen": 0.01}, realized={"mae": 3.0},
                           registered={"mae": 2.0})
    rule_set = rules({"name": "x1", "signal": "feature_effect", "feature": "x1", "above": 0.1},
                     {"name": "any-feature", "signal": "feature_effect", "above": 0.1},
                     {"name": "nulls", "signal": "quality_rate", "kind": "nulls", "above": 0.1},
                     {"name": "mae", "signal": "realized_drop", "metric": "mae", "above": 0.5})
    _, transitions = run(rule_set, [[snap]])
    by_rule = {t.rule: t for t in transitions}
    assert sorted(by_rule) == ["any-feature", "mae", "nulls"]
    assert by_rule["any-feature"].evidence["feature"] == "x2"
    assert by_rule["mae"].value == 1.0  # an error metric's drop is realized minus registered
