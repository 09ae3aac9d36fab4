"""Typed settings. The only module that reads ``SHIPYARD_*`` environment variables.

Settings come in layers, each overriding the one before (``Settings.load``):

1. the defaults below;
2. a YAML file, ``shipyard.yaml``: ``shipyard serve -c FILE`` (or ``config show|check -c``),
   else the file named by ``SHIPYARD_CONFIG``, else none (no file is picked up from the
   working directory);
3. ``SHIPYARD_*`` environment variables: ``SHIPYARD_`` + the key in upper case, with ``__``
   between nested keys (``SHIPYARD_PORT``, ``SHIPYARD_MONITORING__TRACING__ENABLED``,
   ``SHIPYARD_MODELS__0__BATCHING__MAX_SIZE``); a list of strings is comma-separated text
   (``SHIPYARD_MODELS=fraud@champion,iris``);
4. explicit values (CLI flags, keyword arguments); None means "not given".

The merged data is converted into the frozen dataclasses below by ``msgspec.convert``, so
nested configs, ``X | None``, tuples, dicts and paths are typed by one library rather than by
hand. A value of the wrong type, an unknown key (with the nearest valid one) or a value a
config refuses is a ``ConfigError`` naming the key path (``port: expected an integer, got
'abc'``) or the variable it came from.

An unknown ``SHIPYARD_*`` variable is only logged as a warning, once per process, with the
nearest valid variable: the environment is shared with other programs and platforms
(Kubernetes gives every pod of a namespace with a Service named ``shipyard``
``SHIPYARD_SERVICE_HOST``, ``SHIPYARD_PORT_8000_TCP`` and the like, which are skipped), and a
stray variable must not stop a server from starting.
"""

from __future__ import annotations

import ast
import functools
import inspect
import logging
import os
import re
import textwrap
import types
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

import msgspec
import yaml

from shipyard.errors import ConfigError, InvalidInput, InvalidOption, UnknownOption
from shipyard.options import check_names, nearest, parse_bool
from shipyard.types import ModelRef, check_extra_fields, check_name

__all__ = [
    "BatchingConfig",
    "CacheConfig",
    "ConfigError",
    "MetricsConfig",
    "ModelDeployment",
    "MonitoringConfig",
    "PredictionLogConfig",
    "Settings",
    "TracingConfig",
    "field_doc",
    "render_yaml",
]

logger = logging.getLogger(__name__)

ENV_PREFIX = "SHIPYARD_"
CONFIG_VARIABLE = "SHIPYARD_CONFIG"
"""Names the settings file when no ``-c`` is given."""
# Kubernetes service links for a Service named "shipyard": not ours, never warned about
_SERVICE_LINK = re.compile(r"^SHIPYARD_(SERVICE_[A-Z0-9_]+|PORT_\d+_[A-Z]+(_[A-Z]+)?)$")
_warned: set[str] = set()
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
    """Reserved (traffic splits): not available yet."""

    retraining: Any = None
    """Reserved (retraining triggers): not available yet."""

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
        _reserved("traffic", self.traffic)
        _reserved("retraining", self.retraining)

    @property
    def name(self) -> str:
        return ModelRef.parse(self.ref).name


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


# -- the settings ----------------------------------------------------------------------------------------


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

    grpc_port: int | None = None
    """Also serve the Open Inference Protocol over gRPC on this port, same process and models (extra 'grpc';
    0: any free port); unset: no gRPC."""

    access_log: bool = False
    """Log every request."""

    graceful_shutdown_seconds: float = 30.0
    """On SIGTERM/SIGINT, how long requests and gRPC calls in flight may take to finish before the server exits."""

    models: tuple[ModelDeployment, ...] = ()
    """What ``shipyard serve`` serves when no model is named on the command line, each with its own batching,
    cache, runtime and extra_fields (``models:`` in shipyard.yaml; ``SHIPYARD_MODELS=fraud@champion,iris``)."""

    auth: Any = None
    """Reserved (authentication): not available yet."""

    graph: Any = None
    """Reserved (inference graphs): not available yet."""

    monitoring: MonitoringConfig = field(default_factory=MonitoringConfig)
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
        if self.graceful_shutdown_seconds < 0:
            raise ConfigError(f"graceful_shutdown_seconds must not be negative, got {self.graceful_shutdown_seconds}")
        if self.grpc_port is not None and not (0 <= self.grpc_port <= 65535):
            raise ConfigError(f"grpc_port must be between 0 and 65535, got {self.grpc_port}")
        _reserved("auth", self.auth)
        _reserved("graph", self.graph)
        self._check_models()
        _ = self.extra_fields_overrides  # refuse a bad value now, not at the first model load

    def _check_models(self) -> None:
        seen: set[str] = set()
        ttls: dict[float, str] = {}
        for i, m in enumerate(self.models):
            if m.name in seen:
                raise ConfigError(f"models[{i}]: model '{m.name}' is listed twice")
            seen.add(m.name)
            size, ttl = self.cache_for(m.name)
            if size:
                ttls.setdefault(ttl, f"models[{i}] ({m.name})")
        if len(ttls) > 1:
            raise ConfigError(
                "models: cache ttl_seconds differ (" + ", ".join(f"{w}: {t:g}" for t, w in ttls.items())
                + "); the server keeps one shared cache with one lifetime (per-model lifetimes are not available yet)"
            )

    def deployment(self, name: str) -> ModelDeployment | None:
        """The ``models:`` entry of model ``name``, if it has one."""
        return next((m for m in self.models if m.name == name), None)

    def runtime_for(self, name: str) -> str:
        """The runtime mode model ``name`` is served with (its ``models:`` entry, else ``runtime``)."""
        m = self.deployment(name)
        return m.runtime if m is not None and m.runtime is not None else self.runtime

    def cache_for(self, name: str) -> tuple[int, float]:
        """(entries, ttl_seconds) of model ``name`` in the response cache; 0 entries: not cached."""
        m = self.deployment(name)
        c = m.cache if m is not None and m.cache is not None else CacheConfig()
        return (self.cache_size if c.size is None else c.size,
                self.cache_ttl_seconds if c.ttl_seconds is None else c.ttl_seconds)

    @property
    def runtimes_used(self) -> set[str]:
        """Every runtime mode some model may be served with."""
        return {self.runtime} | {m.runtime for m in self.models if m.runtime is not None}

    @property
    def extra_fields_overrides(self) -> dict[str, str]:
        """``extra_fields`` parsed: model name -> policy, with ``"*"`` for every other model.

        A ``models:`` entry's ``extra_fields`` comes first; a ``NAME=POLICY`` pair of the
        ``extra_fields`` setting names the model too and replaces it.
        """
        out: dict[str, str] = {m.name: m.extra_fields for m in self.models if m.extra_fields is not None}
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
    def load(
        cls,
        file: str | os.PathLike[str] | None = None,
        environ: Mapping[str, str] | None = None,
        **overrides: Any,
    ) -> Settings:
        """Defaults, then the settings file, then ``SHIPYARD_*`` variables, then explicit non-None overrides.

        Args:
            file: a YAML settings file; None: the one ``SHIPYARD_CONFIG`` names, if any.
            environ: the environment (default ``os.environ``).
            overrides: setting values (CLI flags); None means not given.

        Returns:
            The validated, frozen settings.

        Raises:
            ConfigError: a file that cannot be read or is no YAML mapping, an unknown key, a value of the
                wrong type or one that is refused; the message names the key path or the variable.
        """
        env = os.environ if environ is None else environ
        given = {k: v for k, v in overrides.items() if v is not None}
        check_names(given, _names(), owner="Settings", what="setting")
        _warn_unknown_variables(env)
        data: dict[str, Any] = {}
        origins: dict[tuple[str | int, ...], str] = {}
        path = file if file is not None else (env.get(CONFIG_VARIABLE) or None)
        if path is not None:
            shown = str(path)
            content = _read_file(Path(path))
            _check_keys(content, Settings, (), owner=shown)
            data.update(content)
            origins.update({(k,): shown for k in content})
        for variable, keys, value in _variables(env):
            _put(data, keys, value, variable)
            origins[keys] = variable
        plain = {name: msgspec.to_builtins(value, enc_hook=str) for name, value in given.items()}
        _check_keys(plain, Settings, (), owner="Settings")
        for name, value in plain.items():
            data[name] = value
            origins[(name,)] = ""
        _normalise_models(data)
        return _convert(data, origins)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """``load`` without an explicit file (``SHIPYARD_CONFIG`` still names one)."""
        return cls.load(None, environ, **overrides)

    def replace(self, **changes: Any) -> Settings:
        given = {k: v for k, v in changes.items() if v is not None}
        check_names(given, _names(), owner="Settings", what="setting")
        return replace(self, **given)


# -- loading ---------------------------------------------------------------------------------------------


def _names() -> list[str]:
    return [f.name for f in fields(Settings)]


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


def _config_class(tp: Any) -> type | None:
    """The dataclass ``tp`` is (or ``X | None`` wraps), else None."""
    if get_origin(tp) in (Union, types.UnionType):
        members = [a for a in get_args(tp) if a is not type(None)]
        tp = members[0] if len(members) == 1 else None
    return tp if isinstance(tp, type) and is_dataclass(tp) else None


def _item_class(tp: Any) -> type | None:
    """The dataclass of the items of ``tuple[X, ...]``, else None."""
    if get_origin(tp) is tuple:
        return _config_class(get_args(tp)[0])
    return None


def _dotted(keys: tuple[str | int, ...]) -> str:
    out = ""
    for k in keys:
        out += f"[{k}]" if isinstance(k, int) else (f".{k}" if out else k)
    return out


def _read_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text") from None
    try:
        content = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "cannot be parsed"
        raise ConfigError(f"config file {path} is not valid YAML: {problem}{where}") from None
    if content is None:
        return {}
    if not isinstance(content, dict):
        raise ConfigError(f"config file {path} must hold a mapping of settings, got {_kind(content)}")
    return content


def _check_keys(data: Any, cls: type, keys: tuple[str | int, ...], *, owner: str) -> None:
    """Refuse a key that is no field of ``cls`` (recursively), naming the nearest valid key path."""
    if not isinstance(data, dict):
        return  # a wrong type: the conversion names it
    hints = _hints(cls)
    prefix = _dotted(keys) + "." if keys else ""
    for key, value in data.items():
        if not isinstance(key, str) or key not in hints:
            valid = {k: prefix + k for k in hints}
            raise UnknownOption(prefix + str(key), owner=owner, valid=sorted(valid.values()),
                                suggestion=nearest(str(key), valid), what="key")
        tp = hints[key]
        if (sub := _config_class(tp)) is not None:
            _check_keys(value, sub, (*keys, key), owner=owner)
        elif (item := _item_class(tp)) is not None and isinstance(value, list):
            for i, entry in enumerate(value):
                _check_keys(entry, item, (*keys, key, i), owner=owner)


def _variables(env: Mapping[str, str]) -> Iterator[tuple[str, tuple[str | int, ...], Any]]:
    """(variable, key path, value) of each non-empty ``SHIPYARD_*`` variable that names a setting."""
    for variable, raw in env.items():
        if not variable.startswith(ENV_PREFIX) or raw == "" or variable == CONFIG_VARIABLE:
            continue
        found = _env_target(variable)
        if found is None:
            continue  # warned about by _warn_unknown_variables
        keys, tp = found
        yield variable, keys, _from_text(raw, tp)


def _env_target(variable: str) -> tuple[tuple[str | int, ...], Any] | None:
    """The key path and type ``variable`` sets, or None when it names no setting."""
    parts = variable[len(ENV_PREFIX):].lower().split("__")
    cls: type | None = Settings
    tp: Any = None
    keys: list[str | int] = []
    i = 0
    while i < len(parts):
        if cls is None:
            return None
        hints = _hints(cls)
        if parts[i] not in hints:
            return None
        keys.append(parts[i])
        tp = hints[parts[i]]
        cls = _config_class(tp)
        item = _item_class(tp)
        if item is not None and i + 1 < len(parts):
            if not parts[i + 1].isdigit():
                return None
            keys.append(int(parts[i + 1]))
            cls, i = item, i + 1
        i += 1
    return tuple(keys), tp


def _from_text(raw: str, tp: Any) -> Any:
    """Text shaped for ``msgspec.convert`` (non-strict mode reads numbers and true/false from text)."""
    if get_origin(tp) is tuple:
        return [t.strip() for t in raw.split(",") if t.strip()]
    if tp is bool or (get_origin(tp) in (Union, types.UnionType) and bool in get_args(tp)):
        try:
            return parse_bool(raw)  # also yes/no/on/off, as before
        except ValueError:
            return raw  # refused by the conversion, naming the variable
    return raw


def _put(data: dict[str, Any], keys: tuple[str | int, ...], value: Any, variable: str) -> None:
    node: Any = data
    for here, nxt in zip(keys, keys[1:], strict=False):
        fresh: Any = [] if isinstance(nxt, int) else {}
        if isinstance(node, list):
            assert isinstance(here, int)
            if here > len(node):
                raise ConfigError(f"{variable}: models are numbered from 0 without gaps; there are {len(node)}")
            if here == len(node):
                node.append(fresh)
            if isinstance(node[here], str) and isinstance(nxt, str):
                node[here] = {"ref": node[here]}
            node = node[here]
        else:
            if not isinstance(node.get(here), (dict, list)):
                node[here] = fresh
            node = node[here]
    last = keys[-1]
    if isinstance(node, list):
        assert isinstance(last, int)
        if last > len(node):
            raise ConfigError(f"{variable}: models are numbered from 0 without gaps; there are {len(node)}")
        node[last:last + 1] = [value]
    else:
        node[last] = value


def _normalise_models(data: dict[str, Any]) -> None:
    """``models: [fraud@champion]`` is short for ``models: [{ref: fraud@champion}]``."""
    models = data.get("models")
    if isinstance(models, (list, tuple)):
        data["models"] = [{"ref": m} if isinstance(m, str) else m for m in models]


def _dec_hook(tp: Any, value: Any) -> Any:
    if tp is Path and isinstance(value, str) and value:
        return Path(value)
    raise NotImplementedError


_TYPE_WORDS = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string",
               "array": "a list", "object": "a mapping", "null": "null", "Path": "a path"}
_MSGSPEC_ERROR = re.compile(r"^(?P<message>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.S)
_PATH_PART = re.compile(r"\.([A-Za-z_][A-Za-z0-9_]*)|\[(\d+)\]|\[\.\.\.\]")


def _convert(data: dict[str, Any], origins: Mapping[tuple[str | int, ...], str]) -> Settings:
    try:
        return msgspec.convert(data, Settings, strict=False, dec_hook=_dec_hook)
    except msgspec.ValidationError as exc:
        raise _explain(str(exc), data, origins) from None
    except NotImplementedError:
        raise ConfigError("a path setting is empty or not text") from None


def _explain(error: str, data: Any, origins: Mapping[tuple[str | int, ...], str]) -> ConfigError:
    """A msgspec error as one line naming the key path (or the variable) and the value at fault."""
    m = _MSGSPEC_ERROR.match(error)
    assert m is not None
    message, path = m["message"], m["path"] or ""
    keys: tuple[str | int, ...] = tuple(
        p.group(1) if p.group(1) is not None else int(p.group(2)) for p in _PATH_PART.finditer(path)
        if p.group(0) != "[...]"
    )
    origin = next((origins[keys[:n]] for n in range(len(keys), 0, -1) if keys[:n] in origins), "")
    where = origin if origin.startswith(ENV_PREFIX) else _dotted(keys)
    expected = re.match(r"Expected `(?P<want>[^`]+)`, got `(?P<got>[^`]+)`", message)
    if expected:
        value = _value_at(data, keys)
        want = " or ".join(_TYPE_WORDS.get(w.strip(), w.strip()) for w in expected["want"].split("|"))
        shown = repr(value) if isinstance(value, (str, int, float, bool)) else _kind(value)
        message = f"expected {want}, got {shown}"
    else:
        missing = re.match(r"Object missing required field `(?P<key>[^`]+)`", message)
        if missing:
            message = f"the key '{missing['key']}' is missing"
    suffix = f" (in {origin})" if origin and not origin.startswith(ENV_PREFIX) else ""
    text = f"{where}: {message}{suffix}" if where else f"{message}{suffix}"
    return InvalidOption(text, option=where, got=_value_at(data, keys))


def _value_at(data: Any, keys: tuple[str | int, ...]) -> Any:
    for k in keys:
        try:
            data = data[k]
        except (KeyError, IndexError, TypeError):
            return None
    return data


def _kind(value: Any) -> str:
    return {dict: "a mapping", list: "a list", type(None): "nothing"}.get(type(value), type(value).__name__)


def _warn_unknown_variables(env: Mapping[str, str]) -> None:
    """Log each ``SHIPYARD_*`` variable that is no setting (typos such as SHIPYARD_MAX_QEUE), once."""
    variables = {n: ENV_PREFIX + n.upper() for n in _names()}
    for key in env:
        if (not key.startswith(ENV_PREFIX) or key == CONFIG_VARIABLE or key in _warned
                or _SERVICE_LINK.match(key) or _env_target(key) is not None):
            continue
        _warned.add(key)
        # matched without the prefix, which every name shares
        near = nearest(key[len(ENV_PREFIX):], variables)
        error = UnknownOption(key, owner="shipyard settings", valid=sorted(variables.values()), suggestion=near,
                              what="environment variable")
        logger.warning("%s (it is ignored)", error)


# -- showing settings ------------------------------------------------------------------------------------


_SECRET_KEY = re.compile(r"(^|_)(password|passwd|secret|token|key|credentials?)($|_)", re.I)
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^:/@\s]*:)(?P<password>[^@\s/]+)(?P<at>@)")
MASK = "***"


def masked(value: Any, key: str = "") -> Any:
    """``value`` (plain data) with secrets replaced by ``***``: values of keys named like password, secret,
    token or key, and the password of URLs (``postgresql://u:***@h/db``)."""
    if isinstance(value, dict):
        return {k: masked(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [masked(v, key) for v in value]
    if isinstance(value, str):
        if value and _SECRET_KEY.search(key):
            return MASK
        return _URL_PASSWORD.sub(lambda m: m["head"] + MASK + m["at"], value)
    return value


def render_yaml(settings: Settings) -> str:
    """The settings as a shipyard.yaml, secrets masked; unset reserved keys are left out."""
    data = msgspec.to_builtins(asdict(settings), enc_hook=str)
    for name in ("auth", "graph"):
        if data.get(name) is None:
            data.pop(name, None)
    for m in data.get("models", []):
        for name in ("traffic", "retraining"):
            if m.get(name) is None:
                m.pop(name, None)
    text: str = yaml.safe_dump(masked(data), sort_keys=False, default_flow_style=False)
    return text


@functools.cache
def _docs(cls: type) -> dict[str, str]:
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    out: dict[str, str] = {}
    for stmt, after in zip(body, body[1:], strict=False):
        if (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)
                and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)):
            out[stmt.target.id] = " ".join(after.value.value.split())
    return out


def field_doc(cls: type, name: str) -> str:
    """The one-line docstring of field ``name`` of config class ``cls`` (for ``--help``), or ''."""
    try:
        return _docs(cls).get(name, "")
    except (OSError, TypeError):  # no source (a frozen app): help without it
        return ""
