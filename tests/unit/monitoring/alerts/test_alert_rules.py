"""Alert rules and notifiers from shipyard.yaml: accepted as documented, refused naming the rule and the key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from shipyard.config import Settings
from shipyard.errors import ConfigError
from shipyard.monitoring.alerts import MonitorSnapshot, NotifierSpec, Rule, RuleSet

GOOD = """
monitoring:
  alerts:
    evaluate_seconds: 5
    rules:
      - name: accuracy-drop
        model: fraud
        signal: realized_drop
        metric: accuracy
        above: 0.03
        for: 3
        cooldown_seconds: 3600
        notify: [ops, retrain, topic, log]
      - {name: drifting, signal: drift_share, above: 0.5}
    notifiers:
      - {name: ops, kind: webhook, url: "https://hooks.example.com/x", timeout_seconds: 5, retries: 2,
         headers: {authorization: "Bearer t"}, send_resolved: true}
      - {name: retrain, kind: command, command: "python retrain.py --model fraud", timeout_seconds: 600}
      - {name: topic, kind: stream, url: "local://retrain"}
"""


def test_the_documented_rules_load_with_the_settings(tmp_path: Path) -> None:
    file = tmp_path / "shipyard.yaml"
    file.write_text(GOOD)
    config = Settings.load(file).monitoring.alerts
    rule_set = config.rule_set()
    first, second = rule_set.rules
    assert (first.name, first.model, first.signal, first.metric, first.above, first.for_, first.cooldown_seconds) == (
        "accuracy-drop", "fraud", "realized_drop", "accuracy", 0.03, 3, 3600.0)
    assert first.notify == ("ops", "retrain", "topic", "log")
    assert (second.model, second.for_, second.cooldown_seconds) == ("*", 1, 0.0)  # the defaults
    assert rule_set.notifiers["retrain"].command == ("python", "retrain.py", "--model", "fraud")
    assert rule_set.notifiers["ops"].headers == {"authorization": "Bearer t"}
    assert rule_set.notifiers["log"].kind == "log"  # built in when named and not declared
    assert first.condition == "realized_drop(accuracy) > 0.03"
    assert Rule.from_dict(first.to_dict()) == first
    assert NotifierSpec.from_dict(rule_set.notifiers["ops"].to_dict()) == rule_set.notifiers["ops"]


@pytest.mark.parametrize(("rule", "message"), [
    ({"name": "r", "signal": "drift_share", "abov": 0.5}, "unknown key 'abov' for alert rule 'r'; did you mean"),
    ({"name": "r", "above": 0.5}, "alert rule 'r': signal is missing"),
    ({"name": "r", "signal": "accuracy", "above": 0.5}, "alert rule 'r': signal must be one of"),
    ({"name": "r", "signal": "drift_share"}, "alert rule 'r': give exactly one of above or below"),
    ({"name": "r", "signal": "drift_share", "above": 0.5, "below": 0.1}, "exactly one of above or below"),
    ({"name": "r", "signal": "drift_share", "above": "high"}, "alert rule 'r': above must be a number"),
    ({"name": "r", "signal": "realized_drop", "above": 0.1}, "alert rule 'r': signal realized_drop needs metric"),
    ({"name": "r", "signal": "drift_share", "feature": "x", "above": 0.1}, "feature does not apply to signal drift"),
    ({"name": "r", "signal": "quality_rate", "kind": "typos", "above": 0.1}, "alert rule 'r': kind must be one of"),
    ({"name": "r", "signal": "drift_share", "above": 0.1, "for": 0}, "alert rule 'r': for must be a whole number"),
    ({"name": "r", "signal": "drift_share", "above": 0.1, "cooldown_seconds": -1}, "cooldown_seconds must be"),
    ({"name": "r", "signal": "drift_share", "above": 0.1, "notify": ["pager"]}, "notify names 'pager', which is not"),
    ({"signal": "drift_share", "above": 0.1}, "alert rule: name must be a non-empty string"),
])
def test_a_bad_rule_is_refused_naming_the_rule_and_the_key(rule: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        RuleSet.parse([rule])


@pytest.mark.parametrize(("notifier", "message"), [
    ({"name": "n", "kind": "email"}, "alert notifier 'n': kind must be one of log, webhook, command, stream"),
    ({"name": "n", "kind": "webhook"}, "alert notifier 'n': kind webhook needs url"),
    ({"name": "n", "kind": "webhook", "url": "ftp://x"}, "url must start with http:// or https://"),
    ({"name": "n", "kind": "stream", "url": "gopher://x/y"}, "alert notifier 'n': url: unsupported stream URL"),
    ({"name": "n", "kind": "command"}, "alert notifier 'n': kind command needs command"),
    ({"name": "n", "kind": "log", "url": "http://x"}, "url does not apply to kind log"),
    ({"name": "n", "kind": "webhook", "url": "http://x", "timeout_seconds": 0}, "timeout_seconds must be positive"),
    ({"name": "n", "kind": "webhook", "url": "http://x", "retries": -1}, "retries must not be negative"),
    ({"name": "n", "kind": "log", "retry": 2}, "unknown key 'retry' for alert notifier 'n'"),
])
def test_a_bad_notifier_is_refused_naming_it_and_the_key(notifier: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        RuleSet.parse([], [notifier])


def test_names_must_be_unique() -> None:
    with pytest.raises(ConfigError, match="alert rule 'r': declared twice"):
        RuleSet.parse([{"name": "r", "signal": "drift_share", "above": 0.1}] * 2)
    with pytest.raises(ConfigError, match="alert notifier 'n': declared twice"):
        RuleSet.parse([], [{"name": "n", "kind": "log"}] * 2)


def test_the_settings_refuse_a_bad_rule_at_load(tmp_path: Path) -> None:
    file = tmp_path / "shipyard.yaml"
    file.write_text("monitoring:\n  alerts:\n    rules:\n      - {name: acc, signal: realized_drop, above: 0.03}\n")
    with pytest.raises(ConfigError, match=r"monitoring\.alerts.*alert rule 'acc': signal realized_drop needs metric"):
        Settings.load(file)


def test_a_threshold_is_crossed_strictly_and_below_means_below() -> None:
    above = Rule("a", "label_coverage", above=0.5)
    below = Rule("b", "label_coverage", below=0.5)
    assert not above.breached(0.5) and above.breached(0.51)
    assert not below.breached(0.5) and below.breached(0.49)
    snap = MonitorSnapshot("m", 1, "a", 0.0, realized={"accuracy": float("nan")}, registered={"accuracy": 0.9})
    assert Rule("c", "realized_drop", metric="accuracy", above=0.1).measure(snap) is None  # NaN is no data
