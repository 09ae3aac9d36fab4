"""``Settings``: every setting of shipyard, typed, validated at construction, frozen."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from shipyard.config._sections import (
    CacheConfig,
    ModelDeployment,
    MonitoringConfig,
)
from shipyard.config._security import SecurityConfig
from shipyard.errors import ConfigError, InvalidInput
from shipyard.options import check_names
from shipyard.types import check_extra_fields, check_name

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

    explain_max_rows: int = 100
    """Rows one POST /v1/models/NAME:explain may ask to explain; more get 400 (explanations cost far more than
    predictions)."""

    alias_refresh_seconds: float = 2.0
    """How long a server trusts a resolved alias (and a traffic policy) before asking the registry again."""

    rollout_tick_seconds: float = 5.0
    """How often the rollout controller steps canaries and bandits (one replica at a time holds its lease;
    0: this server runs no controller)."""

    retrain_tick_seconds: float = 10.0
    """How often the replica holding the ``retraining`` lease looks for due retraining schedules and alert
    incidents (models whose ``retraining:`` has a ``schedule`` or ``on_alerts``)."""

    workers: int = 1
    """Server processes: 1 serves in this process; N > 1 runs N whole servers (each loads the models) on the
    same port(s) under a supervisor that restarts a dead one; 0 means one per CPU core."""

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

    dashboard: bool = True
    """Serve the dashboard at /ui (pages drawn from the JSON API, with the same credentials and scopes)."""

    graceful_shutdown_seconds: float = 30.0
    """On SIGTERM/SIGINT, how long requests and gRPC calls in flight may take to finish before the server exits."""

    models: tuple[ModelDeployment, ...] = ()
    """What ``shipyard serve`` serves when no model is named on the command line, each with its own batching,
    cache, runtime and extra_fields (``models:`` in shipyard.yaml; ``SHIPYARD_MODELS=fraud@champion,iris``)."""

    security: SecurityConfig = field(default_factory=SecurityConfig)
    """Authentication (API keys, JWT), TLS, and the hosts callbacks and model URLs may reach
    (``security:`` in shipyard.yaml)."""

    graph: Any = None
    """Inference graphs ``shipyard serve`` registers (reusing an unchanged version) and serves: one mapping
    or a list, each with ``name``, ``steps`` and optionally ``alias`` (``graph:`` in shipyard.yaml; see
    ``shipyard.graphs.config``)."""

    monitoring: MonitoringConfig = field(default_factory=MonitoringConfig)
    """Metrics, traces and the prediction log (``monitoring:`` in shipyard.yaml)."""

    def __post_init__(self) -> None:
        if not (0 <= self.port <= 65535):
            raise ConfigError(f"port must be between 0 and 65535, got {self.port}")
        if self.explain_max_rows < 1:
            raise ConfigError(f"explain_max_rows must be at least 1, got {self.explain_max_rows}")
        if self.max_body_bytes < 1024:
            raise ConfigError(f"max_body_bytes must be at least 1024, got {self.max_body_bytes}")
        if self.log_format not in ("text", "json"):
            raise ConfigError(f"log_format must be 'text' or 'json', got {self.log_format!r}")
        if self.alias_refresh_seconds < 0:
            raise ConfigError("alias_refresh_seconds must not be negative")
        if self.rollout_tick_seconds < 0:
            raise ConfigError("rollout_tick_seconds must not be negative")
        if not self.retrain_tick_seconds > 0:
            raise ConfigError("retrain_tick_seconds must be positive")
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
        _ = self.graphs  # refuse a bad graph: block now, naming the key
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

    @property
    def graphs(self) -> list[Any]:
        """The ``graph:`` block's graphs (``shipyard.graphs.config.DeclaredGraph``), checked."""
        from shipyard.graphs.config import declared  # the graph's own rules, kept in one place

        return declared(self.graph)

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
        """How many server processes ``workers`` means on this machine."""
        return self.workers or max(1, os.cpu_count() or 1)

    @property
    def cache_dir(self) -> Path:
        return (self.home / "cache").resolve()

    @classmethod
    def load(
        cls,
        file: str | Path | None = None,
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
        from shipyard.config._loading import load  # it builds Settings: imported when first needed

        return load(file, environ, overrides)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """``load`` without an explicit file (``SHIPYARD_CONFIG`` still names one)."""
        return cls.load(None, environ, **overrides)

    def replace(self, **changes: Any) -> Settings:
        given = {k: v for k, v in changes.items() if v is not None}
        check_names(given, setting_names(), owner="Settings", what="setting")
        return replace(self, **given)


def setting_names() -> list[str]:
    """The top-level settings' names."""
    return [f.name for f in fields(Settings)]
