"""The per-concern configs a ``Settings`` is made of: model deployments, monitoring; shared constants."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any

from shipyard.errors import ConfigError, InvalidInput
from shipyard.types import ModelRef, check_extra_fields

logger = logging.getLogger("shipyard.config")  # one logger for the package, the name users filter on

ENV_PREFIX = "SHIPYARD_"
CONFIG_VARIABLE = "SHIPYARD_CONFIG"
#: Variables the command line reads that are no setting: never warned about as unknown.
OTHER_VARIABLES = frozenset({CONFIG_VARIABLE, "SHIPYARD_TOKEN"})
"""Names the settings file when no ``-c`` is given."""
# Kubernetes service links for a Service named "shipyard": not ours, never warned about
_SERVICE_LINK = re.compile(r"^SHIPYARD_(SERVICE_[A-Z0-9_]+|PORT_\d+_[A-Z]+(_[A-Z]+)?)$")
_RUNTIMES = ("auto", "native", "onnx")


class _Invalid(ConfigError, ValueError):
    """A refused value inside a nested config: msgspec adds the key path of ValueErrors it sees."""


def _reserved(name: str, value: Any) -> None:
    if value not in (None, {}, [], ""):
        raise _Invalid(f"{name}: not available yet (reserved for a later release); remove it or leave it empty")


# -- one model deployment (``models:``) ----------------------------------------------------------------


@dataclass(frozen=True)
class BatchingConfig:
    """Batching of one model; a key left out takes the server-wide ``batch_*`` setting."""

    enabled: bool = True
    """Merge concurrent requests into one model call (a ``batching:`` block turns it on unless false)."""

    max_size: int | None = None
    """Most rows in one batched model call; unset: ``batch_max_size``."""

    max_wait_ms: float | None = None
    """How long an idle model waits for more requests; unset: ``batch_max_wait_ms``."""

    latency_target_ms: float | None = None
    """Adapt the batch size to keep batch latency under this; unset: ``batch_latency_target_ms``."""

    def __post_init__(self) -> None:
        if self.max_size is not None and self.max_size < 1:
            raise _Invalid(f"max_size must be at least 1, got {self.max_size}")
        for name in ("max_wait_ms", "latency_target_ms"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise _Invalid(f"{name} must not be negative, got {value}")


@dataclass(frozen=True)
class CacheConfig:
    """Response caching of one model. The server keeps one LRU cache that the cached models share."""

    size: int | None = None
    """Entries this model adds to the shared cache (0: not cached); unset: ``cache_size``."""

    ttl_seconds: float | None = None
    """How long a cached response stays valid; unset: ``cache_ttl_seconds``. The shared cache has one
    lifetime, so every cached model must end up with the same value."""

    def __post_init__(self) -> None:
        if self.size is not None and self.size < 0:
            raise _Invalid(f"size must not be negative, got {self.size}")
        if self.ttl_seconds is not None and self.ttl_seconds <= 0:
            raise _Invalid(f"ttl_seconds must be positive, got {self.ttl_seconds}")


@dataclass(frozen=True)
class ModelDeployment:
    """One model the server serves, with its own batching, cache and runtime."""

    ref: str
    """The reference served: ``name``, ``name@alias`` or ``name:VERSION``."""

    batching: BatchingConfig | None = None
    """This model's batching; unset: the server-wide ``batching`` settings."""

    cache: CacheConfig | None = None
    """This model's response caching; unset: the server-wide ``cache_size``/``cache_ttl_seconds``."""

    runtime: str | None = None
    """native, onnx or auto for this model; unset: the server-wide ``runtime``."""

    extra_fields: str | None = None
    """refuse, ignore or passthrough for this model; unset: ``extra_fields``, else the version's own."""

    traffic: Any = None
    """This model's traffic policy (``rollout/policy.py``): ``arms`` (aliases or versions with weights),
    ``shadow``, ``sticky``, ``canary`` or ``bandit``; unset: the name goes to ``ref`` alone."""

    retraining: Any = None
    """Closed-loop retraining (``shipyard.retraining.spec``): the training function, the data window, label
    delay, schedule (cron), the alert rules that start a run, the canary and the training process's limits."""

    def __post_init__(self) -> None:
        try:
            ModelRef.parse(self.ref)
        except InvalidInput as exc:
            raise _Invalid(f"ref: {exc}") from None
        if self.runtime is not None and self.runtime not in _RUNTIMES:
            raise _Invalid(f"runtime must be auto, native or onnx, got {self.runtime!r}")
        if self.extra_fields is not None:
            try:
                check_extra_fields(self.extra_fields, "extra_fields")
            except InvalidInput as exc:
                raise _Invalid(str(exc)) from None
        if self.traffic not in (None, {}):
            self.traffic_policy()  # refused now, naming what is wrong, rather than at the first request
        if self.retraining not in (None, {}):
            from shipyard.retraining.spec import RetrainSpec  # the block's own checks, kept in one place

            try:
                RetrainSpec.parse(self.retraining)
            except ConfigError as exc:
                raise _Invalid(str(exc)) from None

    @property
    def name(self) -> str:
        return ModelRef.parse(self.ref).name

    def traffic_policy(self) -> Any:
        """The ``traffic:`` block as a ``TrafficPolicy`` (None without one)."""
        if self.traffic in (None, {}):
            return None
        from shipyard.rollout.policy import TrafficPolicy  # the policy's own rules, kept in one place

        if not isinstance(self.traffic, dict):
            raise _Invalid(f"traffic must be a mapping, got {type(self.traffic).__name__}")
        try:
            return TrafficPolicy.from_dict({**self.traffic, "model": self.name})
        except ConfigError as exc:
            raise _Invalid(str(exc)) from None


# -- monitoring (issue 13): metrics, traces, the prediction log -------------------------------------------


@dataclass(frozen=True)
class MetricsConfig:
    """Prometheus series of the server (``/metrics``)."""

    enabled: bool = True
    """Record request, latency, batch, queue, in-flight and load-time series and serve them at /metrics."""

    max_models: int = 50
    """Distinct model:version label values kept; later ones are counted under model="other" (bounded cardinality)."""


@dataclass(frozen=True)
class TracingConfig:
    """OpenTelemetry traces: a span per request, with decode, validate, queue, model and encode children."""

    enabled: bool = False
    """Make spans and export them (off: no span is made and tracing costs nothing)."""

    endpoint: str = ""
    """OTLP/HTTP traces endpoint, e.g. http://127.0.0.1:4318/v1/traces (empty: the OTEL_EXPORTER_OTLP_* variables)."""

    service_name: str = "shipyard"
    """The service.name resource attribute of every span."""

    sample_ratio: float = 1.0
    """Share of new traces recorded (a continued traceparent keeps its caller's decision)."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.sample_ratio <= 1.0:
            raise ConfigError(f"monitoring.tracing.sample_ratio must be between 0 and 1, got {self.sample_ratio}")


@dataclass(frozen=True)
class PredictionLogConfig:
    """Every prediction recorded: ids, time, model, version, route, inputs, outputs, latency, trace id."""

    enabled: bool = False
    """Record predictions (off: nothing is recorded)."""

    sink: str = ""
    """Where records go: empty for size-rotated SQLite files under ``home/predictions`` (read by ``shipyard
    logs``); a stream URL (``kafka://``, ``redis://``, ``nats://``, ``local://``; JSON keyed by prediction id);
    or a database URL (``postgresql://``, ``sqlite:///``) whose ``shipyard_predictions`` table gets the rows."""

    sample: float = 1.0
    """Share of predictions recorded, decided per prediction id (so a replay is sampled alike)."""

    redact: tuple[str, ...] = ()
    """Input or output names whose values are replaced by ``"<redacted>"`` before they are recorded."""

    max_buffer: int = 10_000
    """Records held while the sink is slow or down; beyond it records are dropped and counted."""

    max_file_bytes: int = 64 * 1024 * 1024
    """SQLite files are rotated at this size (embedded sink)."""

    max_total_bytes: int = 1024 * 1024 * 1024
    """The oldest SQLite files are deleted beyond this total (embedded sink)."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.sample <= 1.0:
            raise ConfigError(f"monitoring.prediction_log.sample must be between 0 and 1, got {self.sample}")
        if self.max_buffer < 1:
            raise ConfigError(f"monitoring.prediction_log.max_buffer must be at least 1, got {self.max_buffer}")
        if self.max_file_bytes < 1 or self.max_total_bytes < self.max_file_bytes:
            raise ConfigError("monitoring.prediction_log.max_file_bytes must be positive and at most max_total_bytes, "
                              f"got {self.max_file_bytes} and {self.max_total_bytes}")
        if isinstance(self.redact, str):  # one name, or a comma-separated list from an environment variable
            object.__setattr__(self, "redact", tuple(n.strip() for n in self.redact.split(",") if n.strip()))


@dataclass(frozen=True)
class FeedbackConfig:
    """Labels and rewards sent after the fact (``POST /v1/feedback``, a feedback stream), joined to predictions."""

    enabled: bool = False
    """Keep each predicted row (model, version, arm, time, prediction) for the join window so labels can
    join it, and serve /v1/feedback and /v1/models/NAME/quality; off: neither route exists and no
    realized metric is computed. Costs a database row per predicted row (about 16 us each on SQLite)."""

    join_window_days: float = 14.0
    """Labels observed later than this after their prediction count as late: stored, never in a metric.
    Predictions older than this are pruned."""

    stream: str = ""
    """A stream URL (``kafka://``, ``redis://``, ``nats://``, ``local://``) the server consumes feedback
    messages from, each a JSON object like one item of /v1/feedback; empty: no feedback stream."""

    dead_letter: str = ""
    """Where feedback messages that cannot be applied (unknown id, bad body) go; empty: the stream's topic
    with ``.dead`` appended."""

    output: str = ""
    """The output compared with labels; empty: the first output with one value per row."""

    def __post_init__(self) -> None:
        if not self.join_window_days > 0:
            raise ConfigError(f"monitoring.feedback.join_window_days must be positive, got {self.join_window_days}")


@dataclass(frozen=True)
class DriftConfig:
    """Drift and data quality of each served version's inputs and outputs against its reference profile."""

    enabled: bool = True
    """Bin every prediction's inputs and outputs into windows and compare each closed window with the
    version's profile (a version registered without one is not monitored)."""

    window_seconds: float = 60.0
    """Length of a window; the replicas' windows of the same period are summed before comparing."""

    min_rows: int = 200
    """Windows with fewer rows are not compared: small windows never alarm."""

    false_alarms: float = 0.001
    """Target share of windows with any false alarm when nothing drifted (sets each test's threshold)."""

    min_effect: float = 0.1
    """Smallest effect that counts as drift (Wasserstein distance in reference standard deviations,
    Jensen-Shannon distance): very large windows never alarm on trivial shifts."""

    drift_share: float = 0.5
    """Share of input features that must drift for the dataset to count as drifted."""

    tests: dict[str, str] = field(default_factory=dict)
    """A test per feature name (ks, chi_square, z, wasserstein, jensen_shannon, psi, hellinger, cvm);
    unset features take the default for their kind and the reference's size."""

    thresholds: dict[str, float] = field(default_factory=dict)
    """A threshold on the statistic per feature name, for the distance tests."""

    multivariate: bool = True
    """Also compare PCA reconstruction error and MMD over the numeric features together."""

    def __post_init__(self) -> None:
        if not self.window_seconds > 0:
            raise ConfigError(f"monitoring.drift.window_seconds must be positive, got {self.window_seconds}")
        if self.min_rows < 1:
            raise ConfigError(f"monitoring.drift.min_rows must be at least 1, got {self.min_rows}")
        if not 0.0 < self.false_alarms < 1.0:
            raise ConfigError(f"monitoring.drift.false_alarms must be between 0 and 1, got {self.false_alarms}")
        if self.min_effect < 0:
            raise ConfigError(f"monitoring.drift.min_effect must not be negative, got {self.min_effect}")
        if not 0.0 < self.drift_share <= 1.0:
            raise ConfigError(f"monitoring.drift.drift_share must be in (0, 1], got {self.drift_share}")


@dataclass(frozen=True)
class AlertsConfig:
    """Alert rules over drift, realized metrics, data quality and label coverage, and where they go."""

    rules: Any = ()
    """The rules (``monitoring/alerts``): each a name, a signal, a condition, debounce and cool-down, and the
    notifiers and triggers it sends to."""

    notifiers: Any = ()
    """Named notifiers and retraining triggers: ``log``, ``webhook`` (URL), ``command``, ``stream`` (URL)."""

    evaluate_seconds: float = 10.0
    """How often one replica (the one holding the lease) evaluates the rules; 0 turns alerting off."""

    realized_window_seconds: float = 86_400.0
    """Rules on realized metrics and label coverage look at the predictions of this last stretch of time."""

    def __post_init__(self) -> None:
        if self.evaluate_seconds < 0:
            raise ConfigError(f"monitoring.alerts.evaluate_seconds must not be negative, got {self.evaluate_seconds}")
        if not self.realized_window_seconds > 0:
            raise ConfigError("monitoring.alerts.realized_window_seconds must be positive, "
                              f"got {self.realized_window_seconds}")
        for name in ("rules", "notifiers"):  # a YAML list loads as a list; compare and hash as a tuple
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
        if self.rules or self.notifiers:
            self.rule_set()  # refused now, naming the rule and key that are wrong, rather than at the first tick

    def rule_set(self) -> Any:
        """The ``rules`` and ``notifiers`` as a validated ``RuleSet`` (``monitoring/alerts/rules.py``)."""
        from shipyard.monitoring.alerts.rules import RuleSet  # the rules' own checks, kept in one place

        try:
            return RuleSet.parse(self.rules, self.notifiers)
        except ConfigError as exc:
            raise _Invalid(str(exc)) from None


@dataclass(frozen=True)
class MonitoringConfig:
    """What the server records about its predictions."""

    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    tracing: TracingConfig = field(default_factory=TracingConfig)
    prediction_log: PredictionLogConfig = field(default_factory=PredictionLogConfig)
    feedback: FeedbackConfig = field(default_factory=FeedbackConfig)
    drift: DriftConfig = field(default_factory=DriftConfig)
    alerts: AlertsConfig = field(default_factory=AlertsConfig)
