"""What a model's retraining does: the ``retraining:`` block of a ``models:`` entry, validated.

    models:
      - ref: fraud@champion
        retraining:
          train: fraud_training:train        # module:function (else the version's ``train`` tag)
          last: 30d                          # the window of predictions to learn from
          label_delay: 1d                    # predictions younger than this wait for their labels
          holdout_share: 0.2                 # the newest labelled rows kept out to score both versions
          reference_share: 0.3               # share of rows drawn from the version's registered holdout
          per_class: 5000                    # at most this many rows of each label
          min_rows: 200                      # fewer labelled rows: the run fails, nothing is trained
          schedule: "0 3 * * 1"              # cron (UTC), run by the replica holding the lease
          on_alerts: [accuracy-drop]         # alert rules whose incidents start a run
          min_interval: 6h                   # no triggered run sooner than this after the last one
          canary: true                       # hand a candidate that passed the gates to a canary
          accuracy_margin: 0.0               # how much worse than the champion the holdout may score
          latency_budget_ms: 50
          limits: {memory_mb: 2048, cpu_seconds: 3600, timeout_seconds: 3600}

Every duration is a number with ``s``, ``m``, ``h``, ``d`` or ``w``. ``RetrainSpec.parse``
names the key that is wrong and what it expected.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from shipyard.errors import ConfigError

__all__ = ["TRAIN_TAG", "Limits", "RetrainSpec", "parse_duration"]

TRAIN_TAG = "train"
"""The version tag that names the training function when the config names none."""

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)\s*$", re.IGNORECASE)
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_FUNCTION = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


def parse_duration(value: Any, key: str) -> float:
    """``30s``, ``15m``, ``2h``, ``30d``, ``1w`` or a number of seconds -> seconds.

    Raises:
        ConfigError: naming ``key`` and the forms it takes.
    """
    if isinstance(value, bool):
        raise ConfigError(f"retraining.{key}: expected a duration such as 30d or 6h, got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise ConfigError(f"retraining.{key}: expected a duration such as 30d, 6h or 90s, got {value!r}")
        seconds = float(match.group(1)) * _UNIT[match.group(2).lower()]
    if seconds < 0:
        raise ConfigError(f"retraining.{key}: must not be negative, got {value!r}")
    return seconds


def check_function(ref: str, key: str = "train") -> str:
    """``module:function`` (dots allowed in both), else a ConfigError naming ``key``."""
    if not isinstance(ref, str) or not _FUNCTION.match(ref):
        raise ConfigError(f"retraining.{key}: expected module:function (e.g. fraud_training:train), got {ref!r}")
    return ref


@dataclass(frozen=True)
class Limits:
    """What the training process may use; it is killed (and the run fails) past any of them."""

    memory_mb: int | None = None
    """Its address space, in MiB (RLIMIT_AS); unset: no limit."""
    cpu_seconds: int | None = None
    """CPU time (RLIMIT_CPU); unset: no limit."""
    timeout_seconds: float = 3600.0
    """Wall-clock time."""

    @classmethod
    def parse(cls, doc: Any) -> Limits:
        if doc is None:
            return cls()
        if not isinstance(doc, Mapping):
            raise ConfigError(f"retraining.limits: expected a mapping of memory_mb, cpu_seconds, timeout_seconds, "
                              f"got {doc!r}")
        known = {"memory_mb", "cpu_seconds", "timeout_seconds"}
        unknown = sorted(set(map(str, doc)) - known)
        if unknown:
            raise ConfigError(f"retraining.limits: unknown key {unknown[0]!r} (known: {', '.join(sorted(known))})")
        out: dict[str, Any] = {}
        for key in ("memory_mb", "cpu_seconds"):
            if doc.get(key) is not None:
                value = doc[key]
                if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                    raise ConfigError(f"retraining.limits.{key}: expected a whole number >= 1, got {value!r}")
                out[key] = value
        if doc.get("timeout_seconds") is not None:
            timeout = parse_duration(doc["timeout_seconds"], "limits.timeout_seconds")
            if timeout <= 0:
                raise ConfigError("retraining.limits.timeout_seconds: must be positive")
            out["timeout_seconds"] = timeout
        return cls(**out)


@dataclass(frozen=True)
class RetrainSpec:
    """One model's retraining settings (see the module docstring for the YAML)."""

    train: str | None = None
    """``module:function`` of the training function; unset: the current version's ``train`` tag."""
    alias: str = "champion"
    """The alias a promoted candidate takes; its current version is the champion and the parent."""
    last: float = 30 * 86400.0
    """Seconds of predictions the dataset is drawn from."""
    label_delay: float = 0.0
    """Predictions younger than this many seconds are left out (their labels may still come)."""
    holdout_share: float = 0.2
    """Share of the labelled rows, the newest, kept out of training to score champion and candidate."""
    reference_share: float = 0.0
    """Share of the training rows drawn from the current version's registered holdout set (the original data)."""
    per_class: int | None = None
    """At most this many training rows of each label (a seeded sample); unset: all."""
    min_rows: int = 50
    """Fewest labelled rows a run trains on."""
    label_source: str | None = None
    """Only labels from this feedback source; unset: the first label received for each row."""
    schedule: str | None = None
    """A cron expression (5 fields, UTC) for scheduled runs."""
    on_alerts: tuple[str, ...] = ()
    """Alert rules whose incidents on this model start a run (one run per incident)."""
    min_interval: float = 3600.0
    """Seconds a scheduled or alert-started run waits after the model's last run started."""
    canary: bool = True
    """Whether a candidate that passed the gates goes to a canary (else it is promoted at once)."""
    canary_plan: Mapping[str, Any] = field(default_factory=dict)
    """The canary's ``steps``, ``interval_seconds``, ``gates`` (a rollout's ``canary:`` keys)."""
    accuracy_margin: float = 0.0
    """How much worse than the champion the candidate may score on the holdout."""
    latency_budget_ms: float | None = None
    """The candidate's median prediction on its input example must be this fast; unset: its tag, else skipped."""
    mode: str = "full"
    """``full`` (the function trains a new model) or ``incremental`` (``partial_fit`` of a copy of the current one)."""
    limits: Limits = field(default_factory=Limits)
    """The training process's memory, CPU and time limits."""
    seed: int = 0
    """Seed of the per-class and reference samples, so a run is reproducible."""

    @classmethod
    def parse(cls, doc: Any) -> RetrainSpec:
        """The spec of a ``retraining:`` mapping (None or empty: the defaults).

        Raises:
            ConfigError: an unknown key or a bad value, naming it.
        """
        if doc in (None, {}):
            return cls()
        if not isinstance(doc, Mapping):
            raise ConfigError(f"retraining: expected a mapping, got {type(doc).__name__}")
        names = {f.name for f in fields(cls)} - {"canary_plan"}
        unknown = sorted(set(map(str, doc)) - names)
        if unknown:
            raise ConfigError(f"retraining: unknown key {unknown[0]!r} (known: {', '.join(sorted(names))})")
        out: dict[str, Any] = {}
        if doc.get("train") is not None:
            out["train"] = check_function(doc["train"])
        if doc.get("alias") is not None:
            out["alias"] = _text(doc["alias"], "alias")
        for key in ("last", "label_delay", "min_interval"):
            if doc.get(key) is not None:
                out[key] = parse_duration(doc[key], key)
        if out.get("last", 1.0) <= 0:
            raise ConfigError("retraining.last: the window must be longer than 0")
        for key, low, high in (("holdout_share", 0.0, 0.9), ("reference_share", 0.0, 0.9)):
            if doc.get(key) is not None:
                out[key] = _share(doc[key], key, low, high)
        if out.get("holdout_share", 1.0) == 0.0:
            raise ConfigError("retraining.holdout_share: must be above 0 (the gates score on the holdout)")
        for key in ("per_class", "min_rows", "seed"):
            if doc.get(key) is not None:
                value = doc[key]
                if isinstance(value, bool) or not isinstance(value, int) or value < (0 if key == "seed" else 1):
                    raise ConfigError(f"retraining.{key}: expected a whole number >= 1, got {value!r}")
                out[key] = value
        if doc.get("label_source") is not None:
            out["label_source"] = _text(doc["label_source"], "label_source")
        if doc.get("schedule") is not None:
            out["schedule"] = check_cron(_text(doc["schedule"], "schedule"))
        if doc.get("on_alerts") is not None:
            rules = doc["on_alerts"]
            if isinstance(rules, str) or not all(isinstance(r, str) and r for r in rules):
                raise ConfigError(f"retraining.on_alerts: expected a list of alert rule names, got {rules!r}")
            out["on_alerts"] = tuple(rules)
        canary = doc.get("canary")
        if isinstance(canary, bool):
            out["canary"] = canary
        elif isinstance(canary, Mapping):
            out["canary"], out["canary_plan"] = True, dict(canary)
        elif canary is not None:
            raise ConfigError(f"retraining.canary: expected true, false or a mapping of steps, interval_seconds "
                              f"and gates, got {canary!r}")
        if doc.get("accuracy_margin") is not None:
            out["accuracy_margin"] = _number(doc["accuracy_margin"], "accuracy_margin")
        if doc.get("latency_budget_ms") is not None:
            out["latency_budget_ms"] = _number(doc["latency_budget_ms"], "latency_budget_ms")
        if doc.get("mode") is not None:
            if doc["mode"] not in ("full", "incremental"):
                raise ConfigError(f"retraining.mode: expected full or incremental, got {doc['mode']!r}")
            out["mode"] = doc["mode"]
        out["limits"] = Limits.parse(doc.get("limits"))
        return cls(**out)

    def with_options(self, **changes: Any) -> RetrainSpec:
        """This spec with the non-None ``changes`` (command-line flags) applied."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["limits"] = {f.name: getattr(self.limits, f.name) for f in fields(self.limits)}
        out["on_alerts"] = list(self.on_alerts)
        out["canary_plan"] = dict(self.canary_plan)
        return out


def check_cron(expression: str) -> str:
    """A cron expression ``cronsim`` accepts, else a ConfigError saying why."""
    from shipyard._extras import require

    cronsim = require("cronsim", "retraining")
    from datetime import UTC, datetime

    try:
        cronsim.CronSim(expression, datetime.now(UTC))
    except cronsim.CronSimError as exc:
        raise ConfigError(f"retraining.schedule: {expression!r} is not a cron expression: {exc}") from None
    return expression


def _text(value: Any, key: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"retraining.{key}: expected a non-empty string, got {value!r}")
    return value.strip()


def _number(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ConfigError(f"retraining.{key}: expected a number >= 0, got {value!r}")
    return float(value)


def _share(value: Any, key: str, low: float, high: float) -> float:
    number = _number(value, key)
    if not low <= number <= high:
        raise ConfigError(f"retraining.{key}: expected a share from {low:g} to {high:g}, got {value!r}")
    return number
