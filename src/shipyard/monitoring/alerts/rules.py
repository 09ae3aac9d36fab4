"""Alert rules and notifiers as written under ``monitoring.alerts`` in ``shipyard.yaml``, validated.

A rule watches one signal of every model it names (``model: "*"`` for all) and fires when
the signal crosses its threshold::

    monitoring:
      alerts:
        evaluate_seconds: 10
        rules:
          - name: accuracy-drop
            model: fraud            # or "*" (the default): every served model
            signal: realized_drop   # drift_share | feature_effect | realized_drop | quality_rate | label_coverage
            metric: accuracy        # realized_drop: which metric (registered minus realized)
            above: 0.03             # or below: ...; exactly one of them
            for: 3                  # consecutive new evaluations the condition must hold (default 1)
            cooldown_seconds: 3600  # after an incident resolves, none for this rule and model within it
            notify: [ops, retrain]
        notifiers:
          - {name: ops, kind: webhook, url: "https://hooks.example.com/x", timeout_seconds: 5, retries: 3}
          - {name: retrain, kind: command, command: [python, retrain.py], timeout_seconds: 3600}
          - {name: topic, kind: stream, url: "kafka://broker:9092/retrain"}
          - {name: audit, kind: log}

Signals and the value each compares:

* ``drift_share``: the latest window's share of drifted input features;
* ``feature_effect``: a feature's effect size (``feature: NAME``), or the largest of any feature;
* ``realized_drop``: registered minus realized ``metric`` (realized minus registered for error
  metrics such as ``mae`` and ``rmse``, see ``ERROR_METRICS``): positive is worse;
* ``quality_rate``: the share of rows with a data-quality failure of ``kind`` (``nulls``,
  ``out_of_range``, ``unseen``, ``type_failures``), or the largest of them;
* ``label_coverage``: the share of predictions that received a label (use ``below``).

``for`` defaults to 1: the drift tests are calibrated per window already, so one window over
the threshold is an alarm; realized metrics, noisier, usually want more. A rule naming a
notifier called ``log`` that is not declared gets the built-in log notifier.
"""

from __future__ import annotations

import math
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from shipyard.errors import ConfigError
from shipyard.monitoring.alerts.snapshot import MonitorSnapshot
from shipyard.options import check_names

__all__ = [
    "ERROR_METRICS",
    "NOTIFIER_KINDS",
    "QUALITY_KINDS",
    "SIGNALS",
    "Measurement",
    "NotifierSpec",
    "Rule",
    "RuleSet",
]

SIGNALS = ("drift_share", "feature_effect", "realized_drop", "quality_rate", "label_coverage")
QUALITY_KINDS = ("nulls", "out_of_range", "unseen", "type_failures")
ERROR_METRICS = frozenset({"mae", "mse", "rmse", "mape", "log_loss", "brier", "error_rate"})
"""Realized metrics where lower is better: their drop is realized minus registered."""
NOTIFIER_KINDS = ("log", "webhook", "command", "stream")

_RULE_KEYS = ("name", "model", "signal", "feature", "metric", "kind", "above", "below", "for",
              "cooldown_seconds", "notify")
_NOTIFIER_KEYS = ("name", "kind", "url", "command", "timeout_seconds", "retries", "headers", "send_resolved")
_SIGNAL_KEYS = {"feature_effect": "feature", "realized_drop": "metric", "quality_rate": "kind"}


@dataclass(frozen=True)
class Measurement:
    """A rule's signal in one snapshot: the value compared and what it was read from."""

    value: float
    detail: dict[str, Any] = field(default_factory=dict)
    """E.g. the feature with the largest effect, the realized and registered metric."""


@dataclass(frozen=True)
class Rule:
    """One alert rule (see the module docstring for the YAML)."""

    name: str
    signal: str
    model: str = "*"
    """A model name, or ``*`` for every model."""
    feature: str | None = None
    """``feature_effect``: the feature watched; None: any feature (the largest effect)."""
    metric: str | None = None
    """``realized_drop``: the realized metric compared with the registered one."""
    kind: str | None = None
    """``quality_rate``: the failure kind; None: any kind (the largest rate)."""
    above: float | None = None
    """Fire while the value is greater than this."""
    below: float | None = None
    """Fire while the value is less than this."""
    for_: int = 1
    """Consecutive new evaluations (snapshots newer than the last counted) the condition must hold."""
    cooldown_seconds: float = 0.0
    """After an incident of this rule and model resolves, no new one opens within this many seconds."""
    notify: tuple[str, ...] = ()
    """Names of the notifiers (and retraining triggers) each incident goes to, once each."""

    def __post_init__(self) -> None:
        where = f"alert rule {self.name!r}"
        if not self.name or not isinstance(self.name, str):
            raise ConfigError("alert rule: name must be a non-empty string")
        if self.signal not in SIGNALS:
            raise ConfigError(f"{where}: signal must be one of {', '.join(SIGNALS)}, got {self.signal!r}")
        if not isinstance(self.model, str) or not self.model:
            raise ConfigError(f"{where}: model must be a model name or \"*\", got {self.model!r}")
        for key in ("feature", "metric", "kind"):
            if getattr(self, key) is not None and _SIGNAL_KEYS.get(self.signal) != key:
                raise ConfigError(f"{where}: {key} does not apply to signal {self.signal}")
        if self.signal == "realized_drop" and not self.metric:
            raise ConfigError(f"{where}: signal realized_drop needs metric (accuracy, f1, mae, ...)")
        if self.kind is not None and self.kind not in QUALITY_KINDS:
            raise ConfigError(f"{where}: kind must be one of {', '.join(QUALITY_KINDS)}, got {self.kind!r}")
        if (self.above is None) == (self.below is None):
            raise ConfigError(f"{where}: give exactly one of above or below")
        for key in ("above", "below"):
            value = getattr(self, key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)
                                      or not math.isfinite(value)):
                raise ConfigError(f"{where}: {key} must be a finite number, got {value!r}")
        if isinstance(self.for_, bool) or not isinstance(self.for_, int) or self.for_ < 1:
            raise ConfigError(f"{where}: for must be a whole number of evaluations, at least 1, got {self.for_!r}")
        if (isinstance(self.cooldown_seconds, bool) or not isinstance(self.cooldown_seconds, int | float)
                or not self.cooldown_seconds >= 0):
            raise ConfigError(f"{where}: cooldown_seconds must be a number of seconds >= 0, "
                              f"got {self.cooldown_seconds!r}")

    @classmethod
    def from_dict(cls, raw: Any) -> Rule:
        """A rule from its YAML mapping; ConfigError naming the rule and the key that is wrong."""
        if not isinstance(raw, Mapping):
            raise ConfigError(f"alert rule: each rule must be a mapping, got {type(raw).__name__}")
        name = raw.get("name")
        if not isinstance(name, str) or not name:
            raise ConfigError(f"alert rule: name must be a non-empty string, got {name!r}")
        check_names([str(k) for k in raw], _RULE_KEYS, owner=f"alert rule {name!r}", what="key")
        if "signal" not in raw:
            raise ConfigError(f"alert rule {name!r}: signal is missing (one of {', '.join(SIGNALS)})")
        values = {k: v for k, v in raw.items() if k != "for" and v is not None}
        if "for" in raw:
            values["for_"] = raw["for"]
        if "notify" in values:
            values["notify"] = _names(values["notify"], f"alert rule {name!r}: notify")
        for key in ("above", "below", "cooldown_seconds"):
            values[key] = _number(values.get(key), f"alert rule {name!r}: {key}")
        if values["cooldown_seconds"] is None:
            values.pop("cooldown_seconds")
        for key in ("model", "feature", "metric", "kind", "signal"):
            if key in values and values[key] is not None and not isinstance(values[key], str):
                values[key] = str(values[key])  # YAML reads a model called 2024 as a number
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "model": self.model, "signal": self.signal}
        for key in ("feature", "metric", "kind", "above", "below"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        out.update({"for": self.for_, "cooldown_seconds": self.cooldown_seconds, "notify": list(self.notify)})
        return out

    def applies_to(self, model: str) -> bool:
        return self.model in ("*", model)

    def breached(self, value: float) -> bool:
        """Whether ``value`` is over the threshold (strictly)."""
        if self.above is not None:
            return value > self.above
        assert self.below is not None
        return value < self.below

    @property
    def condition(self) -> str:
        """The condition in words, e.g. ``realized_drop(accuracy) > 0.03``."""
        arg = self.feature or self.metric or self.kind
        signal = f"{self.signal}({arg})" if arg else self.signal
        return f"{signal} > {self.above:g}" if self.above is not None else f"{signal} < {self.below:g}"

    def measure(self, snapshot: MonitorSnapshot) -> Measurement | None:
        """The signal's value in ``snapshot``; None when the snapshot does not have it (no data)."""
        if self.signal == "drift_share":
            if snapshot.drift_share is None:
                return None
            return Measurement(float(snapshot.drift_share), {"drift_rows": snapshot.drift_rows,
                                                             "drifted_features": list(snapshot.drifted_features)})
        if self.signal == "feature_effect":
            return _largest(snapshot.feature_effects, self.feature, "feature")
        if self.signal == "quality_rate":
            return _largest(snapshot.quality_rates, self.kind, "kind")
        if self.signal == "label_coverage":
            if snapshot.label_coverage is None:
                return None
            return Measurement(float(snapshot.label_coverage))
        assert self.metric is not None
        realized, registered = snapshot.realized.get(self.metric), snapshot.registered.get(self.metric)
        if realized is None or registered is None or not (math.isfinite(realized) and math.isfinite(registered)):
            return None
        drop = realized - registered if self.metric in ERROR_METRICS else registered - realized
        return Measurement(float(drop), {"metric": self.metric, "realized": float(realized),
                                         "registered": float(registered)})


def _largest(values: Mapping[str, float], key: str | None, label: str) -> Measurement | None:
    if key is not None:
        value = values.get(key)
        if value is None or not math.isfinite(value):
            return None
        return Measurement(float(value), {label: key})
    finite = {k: float(v) for k, v in values.items() if v is not None and math.isfinite(v)}
    if not finite:
        return None
    worst = max(sorted(finite), key=lambda k: finite[k])
    return Measurement(finite[worst], {label: worst})


@dataclass(frozen=True)
class NotifierSpec:
    """One notifier or retraining trigger (``notifiers.py`` builds the thing that sends)."""

    name: str
    kind: str
    """``log``, ``webhook`` (POST JSON to ``url``), ``command`` (run it) or ``stream`` (publish to ``url``)."""
    url: str | None = None
    """``webhook``: the http(s) URL; ``stream``: a stream URL (``kafka://HOST:9092/TOPIC``, ``local://NAME``)."""
    command: tuple[str, ...] = ()
    """``command``: the program and its arguments (a string is split like a shell would; no shell runs)."""
    timeout_seconds: float = 10.0
    """How long one attempt may take (a command is killed after it)."""
    retries: int = 3
    """Webhook and stream: further attempts after a network error (or HTTP 5xx), with backoff. Commands
    never retry: a retraining job that fails is for a person to look at, not to start twice."""
    headers: Mapping[str, str] = field(default_factory=dict)
    """``webhook``: extra HTTP headers (an authorization token, say)."""
    send_resolved: bool = False
    """Also send when the incident resolves (once more, with ``state: resolved``)."""

    def __post_init__(self) -> None:
        where = f"alert notifier {self.name!r}"
        if self.kind not in NOTIFIER_KINDS:
            raise ConfigError(f"{where}: kind must be one of {', '.join(NOTIFIER_KINDS)}, got {self.kind!r}")
        if self.kind in ("webhook", "stream") and not self.url:
            raise ConfigError(f"{where}: kind {self.kind} needs url")
        if self.kind not in ("webhook", "stream") and self.url is not None:
            raise ConfigError(f"{where}: url does not apply to kind {self.kind}")
        if self.kind == "webhook" and not str(self.url).startswith(("http://", "https://")):
            raise ConfigError(f"{where}: url must start with http:// or https://, got {self.url!r}")
        if self.kind == "stream":
            from shipyard.streams.broker import StreamUrl  # parsing only: no broker client is imported

            try:
                StreamUrl.parse(str(self.url))
            except ConfigError as exc:
                raise ConfigError(f"{where}: url: {exc}") from None
        if self.kind == "command" and not self.command:
            raise ConfigError(f"{where}: kind command needs command (a list: [program, arg, ...])")
        if self.kind != "command" and self.command:
            raise ConfigError(f"{where}: command does not apply to kind {self.kind}")
        if self.headers and self.kind != "webhook":
            raise ConfigError(f"{where}: headers apply to kind webhook only")
        if not self.timeout_seconds > 0:
            raise ConfigError(f"{where}: timeout_seconds must be positive, got {self.timeout_seconds!r}")
        if self.retries < 0:
            raise ConfigError(f"{where}: retries must not be negative, got {self.retries!r}")

    @classmethod
    def from_dict(cls, raw: Any) -> NotifierSpec:
        if not isinstance(raw, Mapping):
            raise ConfigError(f"alert notifier: each notifier must be a mapping, got {type(raw).__name__}")
        name = raw.get("name")
        if not isinstance(name, str) or not name:
            raise ConfigError(f"alert notifier: name must be a non-empty string, got {name!r}")
        where = f"alert notifier {name!r}"
        check_names([str(k) for k in raw], _NOTIFIER_KEYS, owner=where, what="key")
        if "kind" not in raw:
            raise ConfigError(f"{where}: kind is missing (one of {', '.join(NOTIFIER_KINDS)})")
        values = {k: v for k, v in raw.items() if v is not None}
        command = values.get("command")
        if isinstance(command, str):
            values["command"] = tuple(shlex.split(command))
        elif command is not None:
            values["command"] = _names(command, f"{where}: command")
        timeout = _number(values.get("timeout_seconds"), f"{where}: timeout_seconds")
        if timeout is not None:
            values["timeout_seconds"] = timeout
        retries = values.get("retries")
        if retries is not None and (isinstance(retries, bool) or not isinstance(retries, int)):
            raise ConfigError(f"{where}: retries must be a whole number, got {retries!r}")
        headers = values.get("headers")
        if headers is not None:
            if not isinstance(headers, Mapping):
                raise ConfigError(f"{where}: headers must be a mapping of header -> value")
            values["headers"] = {str(k): str(v) for k, v in headers.items()}
        if "send_resolved" in values and not isinstance(values["send_resolved"], bool):
            raise ConfigError(f"{where}: send_resolved must be true or false, got {values['send_resolved']!r}")
        if values.get("url") is not None:
            values["url"] = str(values["url"])
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "kind": self.kind}
        if self.url is not None:
            out["url"] = self.url
        if self.command:
            out["command"] = list(self.command)
        out.update({"timeout_seconds": self.timeout_seconds, "retries": self.retries,
                    "send_resolved": self.send_resolved})
        if self.headers:
            out["headers"] = dict(self.headers)
        return out


@dataclass(frozen=True)
class RuleSet:
    """The rules and notifiers of ``monitoring.alerts``, checked together (names unique, ``notify`` known)."""

    rules: tuple[Rule, ...] = ()
    notifiers: Mapping[str, NotifierSpec] = field(default_factory=dict)

    @classmethod
    def parse(cls, rules: Any = (), notifiers: Any = ()) -> RuleSet:
        """Validate the raw YAML values of ``rules`` and ``notifiers``.

        Raises:
            ConfigError: naming the rule or notifier and the key that is wrong.
        """
        specs: dict[str, NotifierSpec] = {}
        for raw in _sequence(notifiers, "notifiers"):
            spec = NotifierSpec.from_dict(raw)
            if spec.name in specs:
                raise ConfigError(f"alert notifier {spec.name!r}: declared twice")
            specs[spec.name] = spec
        parsed: list[Rule] = []
        for raw in _sequence(rules, "rules"):
            rule = Rule.from_dict(raw)
            if any(r.name == rule.name for r in parsed):
                raise ConfigError(f"alert rule {rule.name!r}: declared twice")
            for name in rule.notify:
                if name == "log" and name not in specs:
                    specs["log"] = NotifierSpec("log", "log")
                elif name not in specs:
                    known = ", ".join(sorted(specs)) or "none declared"
                    raise ConfigError(f"alert rule {rule.name!r}: notify names {name!r}, which is not a notifier "
                                      f"(known: {known})")
            parsed.append(rule)
        return cls(tuple(parsed), specs)


def _sequence(value: Any, what: str) -> Sequence[Any]:
    if value is None:
        return ()
    if isinstance(value, str | bytes | Mapping) or not isinstance(value, Sequence):
        raise ConfigError(f"monitoring.alerts.{what} must be a list, got {type(value).__name__}")
    return value


def _names(value: Any, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, Sequence) or not all(isinstance(v, str | int | float) for v in value):
        raise ConfigError(f"{where} must be a list of names, got {value!r}")
    return tuple(str(v) for v in value)


def _number(value: Any, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise ConfigError(f"{where} must be a number, got {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where} must be a number, got {value!r}") from None
