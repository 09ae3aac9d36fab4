"""Typed settings. The only module that reads ``SHIPYARD_*`` environment variables.

Every field has an environment variable named ``SHIPYARD_`` + the field name in
upper case. Settings are validated at construction and frozen afterwards.

An unknown name passed to ``from_env``/``replace`` is refused (``UnknownOption``,
naming the nearest setting). An unknown ``SHIPYARD_*`` variable is only logged
as a warning, once per process, with the nearest valid variable: the environment
is shared with other programs and platforms (Kubernetes gives every pod of a
namespace with a Service named ``shipyard`` ``SHIPYARD_SERVICE_HOST``,
``SHIPYARD_PORT_8000_TCP`` and the like, which are skipped), and a stray
variable must not stop a server from starting.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from shipyard.errors import ConfigError, InvalidInput, InvalidOption, UnknownOption
from shipyard.options import check_names, nearest
from shipyard.types import check_extra_fields, check_name

logger = logging.getLogger(__name__)

ENV_PREFIX = "SHIPYARD_"
# Kubernetes service links for a Service named "shipyard": not ours, never warned about
_SERVICE_LINK = re.compile(r"^SHIPYARD_(SERVICE_[A-Z0-9_]+|PORT_\d+_[A-Z]+(_[A-Z]+)?)$")
_warned: set[str] = set()


@dataclass(frozen=True)
class Settings:
    """Where state lives and how the server listens."""

    home: Path = Path(".shipyard")
    """Folder of the embedded registry (SQLite) and artifacts."""

    registry_url: str = ""
    """SQLAlchemy URL of the registry database; empty means SQLite under ``home``."""

    artifacts: str = ""
    """fsspec URL of the artifact store; empty means ``home/artifacts``."""

    host: str = "127.0.0.1"
    """Address the server binds."""

    port: int = 8000
    """Port of the REST server."""

    max_body_bytes: int = 64 * 1024 * 1024
    """Largest request body accepted; larger ones get 413."""

    alias_refresh_seconds: float = 2.0
    """How long a server trusts a resolved alias before asking the registry again."""

    workers: int = 0
    """Model worker processes: 0 means one per CPU core; 1 runs the model inside the server process."""

    runtime: str = "native"
    """'native' (the model's own library), 'onnx' (compile to ONNX Runtime, fall back to native
    if conversion or the output check fails) or 'auto' (onnx where it is known to help)."""

    keep_alive_seconds: float = 75.0
    """Idle keep-alive connections are closed after this; longer than load balancers' usual 60 s,
    so the server never closes a connection a balancer is about to reuse."""

    header_timeout_seconds: float = 10.0
    """A connection whose request headers are not complete this long after it opened (or after the first
    byte of a later request on it) is answered 408 and closed; 0: no deadline (slow-header clients then
    hold connections forever)."""

    max_connections: int = 1000
    """Open HTTP connections at most; one more is answered 503 with Retry-After and closed at once."""

    batching: bool = False
    """Merge concurrent requests into one model call (models must treat rows independently)."""

    batch_max_size: int = 64
    """Most rows in one batched model call (the ceiling in latency-target mode)."""

    batch_max_wait_ms: float = 0.0
    """How long an idle model waits for more requests before a batch goes (0: never waits)."""

    batch_latency_target_ms: float = 0.0
    """If above 0, adapt the batch size so a batch's latency stays under this (AIMD)."""

    max_queue: int = 256
    """Requests per model version waiting or running; beyond it, 503 with Retry-After at once."""

    request_timeout_seconds: float = 30.0
    """A request still unanswered after this gets 504 (0: no deadline)."""

    cache_size: int = 0
    """Entries of the response cache (0: no cache)."""

    cache_ttl_seconds: float = 300.0
    """How long a cached response stays valid."""

    async_broker: str = "local://shipyard"
    """Broker of asynchronous HTTP requests: requests go to TOPIC.requests.MODEL, results come back on
    TOPIC.results (``local://shipyard``: the embedded broker in ``home``; 'off' or '': no asynchronous requests)."""

    async_consumers: bool = True
    """Whether the server itself predicts asynchronous requests (off: `shipyard stream` processes do)."""

    extra_fields: str = ""
    """Override of the served or streamed models' ``extra_fields`` (refuse, ignore or passthrough): one policy
    for every model, ``NAME=POLICY`` pairs, or both, comma-separated; empty: each version's own policy."""

    log_level: str = "info"
    """Logging level of the CLI and server."""

    log_format: str = "text"
    """Log output: 'text' or 'json'."""

    monitoring: MonitoringConfig = field(default_factory=lambda: MonitoringConfig())
    """Metrics, traces and the prediction log (``monitoring:`` in shipyard.yaml)."""

    def __post_init__(self) -> None:
        if not (0 <= self.port <= 65535):
            raise ConfigError(f"port must be between 0 and 65535, got {self.port}")
        if self.max_body_bytes < 1024:
            raise ConfigError(f"max_body_bytes must be at least 1024, got {self.max_body_bytes}")
        if self.log_format not in ("text", "json"):
            raise ConfigError(f"log_format must be 'text' or 'json', got {self.log_format!r}")
        if self.alias_refresh_seconds < 0:
            raise ConfigError("alias_refresh_seconds must not be negative")
        if self.workers < 0:
            raise ConfigError(f"workers must be 0 (one per core) or more, got {self.workers}")
        if self.runtime not in ("auto", "native", "onnx"):
            raise ConfigError(f"runtime must be auto, native or onnx, got {self.runtime!r}")
        if self.async_broker.strip().lower() in ("off", "none"):
            object.__setattr__(self, "async_broker", "")
        if self.max_queue < 1:
            raise ConfigError(f"max_queue must be at least 1, got {self.max_queue}")
        if self.header_timeout_seconds < 0:
            raise ConfigError(f"header_timeout_seconds must not be negative, got {self.header_timeout_seconds}")
        if self.max_connections < 1:
            raise ConfigError(f"max_connections must be at least 1, got {self.max_connections}")
        if self.request_timeout_seconds < 0 or self.cache_size < 0 or self.batch_latency_target_ms < 0:
            raise ConfigError("request_timeout_seconds, cache_size and batch_latency_target_ms must not be negative")
        _ = self.extra_fields_overrides  # refuse a bad value now, not at the first model load

    @property
    def extra_fields_overrides(self) -> dict[str, str]:
        """``extra_fields`` parsed: model name -> policy, with ``"*"`` for every other model."""
        out: dict[str, str] = {}
        for part in self.extra_fields.split(","):
            name, sep, policy = part.strip().rpartition("=")
            if not policy and not sep:
                continue
            name = name.strip()
            try:
                key = check_name("model name", name) if sep else "*"
            except InvalidInput as exc:
                raise ConfigError(f"extra_fields: {exc}") from None
            try:
                out[key] = check_extra_fields(policy.strip(), f"extra_fields for {name}" if sep else "extra_fields")
            except InvalidInput as exc:
                raise ConfigError(str(exc)) from None
        return out

    @property
    def resolved_registry_url(self) -> str:
        return self.registry_url or f"sqlite:///{(self.home / 'registry.db').resolve()}"

    @property
    def resolved_artifacts(self) -> str:
        return self.artifacts or str((self.home / "artifacts").resolve())

    @property
    def worker_count(self) -> int:
        """How many model workers ``workers`` means on this machine."""
        return self.workers or max(1, os.cpu_count() or 1)

    @property
    def cache_dir(self) -> Path:
        return (self.home / "cache").resolve()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Defaults, then ``SHIPYARD_*`` variables, then explicit non-None overrides."""
        env = os.environ if environ is None else environ
        check_names((k for k, v in overrides.items() if v is not None), _names(), owner="Settings", what="setting")
        _warn_unknown_variables(env)
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(ENV_PREFIX + f.name.upper())
            if raw is not None and raw != "":
                values[f.name] = _convert(f.name, f.type, raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        if "home" in values:
            values["home"] = Path(values["home"])
        return cls(**values)

    def replace(self, **changes: Any) -> Settings:
        given = {k: v for k, v in changes.items() if v is not None}
        check_names(given, _names(), owner="Settings", what="setting")
        return replace(self, **given)


def _names() -> list[str]:
    return [f.name for f in fields(Settings)]


def _warn_unknown_variables(env: Mapping[str, str]) -> None:
    """Log each ``SHIPYARD_*`` variable that is no setting (typos such as SHIPYARD_MAX_QEUE), once."""
    variables = {n: ENV_PREFIX + n.upper() for n in _names()}
    valid = set(variables.values())
    for key in env:
        if not key.startswith(ENV_PREFIX) or key in valid or key in _warned or _SERVICE_LINK.match(key):
            continue
        _warned.add(key)
        # matched without the prefix, which every name shares
        near = nearest(key[len(ENV_PREFIX):], variables)
        error = UnknownOption(key, owner="shipyard settings", valid=sorted(valid), suggestion=near,
                              what="environment variable")
        logger.warning("%s (it is ignored)", error)


def _convert(name: str, type_name: Any, raw: str) -> Any:
    t = str(type_name)
    try:
        if t == "int":
            return int(raw)
        if t == "float":
            return float(raw)
        if t == "Path":
            return Path(raw)
        if t == "bool":
            if raw.lower() not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                raise ValueError(raw)
            return raw.lower() in ("1", "true", "yes", "on")
        return raw
    except ValueError:
        variable = f"{ENV_PREFIX}{name.upper()}"
        raise InvalidOption(f"{variable}={raw!r} is not a valid {t}", option=variable, expected=t, got=raw) from None


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
class MonitoringConfig:
    """What the server records about its predictions."""

    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    tracing: TracingConfig = field(default_factory=TracingConfig)
    prediction_log: PredictionLogConfig = field(default_factory=PredictionLogConfig)
