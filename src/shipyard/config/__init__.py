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

import os
from collections.abc import Mapping

from shipyard.config import _loading  # noqa: F401 - loaded with the package (Settings.load uses it)
from shipyard.config._sections import (
    CONFIG_VARIABLE,
    ENV_PREFIX,
    AlertsConfig,
    BatchingConfig,
    CacheConfig,
    DriftConfig,
    FeedbackConfig,
    MetricsConfig,
    ModelDeployment,
    MonitoringConfig,
    PredictionLogConfig,
    TracingConfig,
)
from shipyard.config._security import AuthConfig, JwtConfig, SecurityConfig, TlsConfig
from shipyard.config._settings import Settings
from shipyard.config._showing import MASK, field_doc, masked, render_yaml
from shipyard.errors import ConfigError


def secret_from_env(variable: str, environ: Mapping[str, str] | None = None) -> str | None:
    """The value of the environment variable a setting names for a secret (``token_env``); None when unset or empty.

    Secrets stay out of registered versions and settings files: they name the variable instead.
    """
    value = (os.environ if environ is None else environ).get(variable, "").strip()
    return value or None


__all__ = [
    "CONFIG_VARIABLE",
    "ENV_PREFIX",
    "MASK",
    "BatchingConfig",
    "CacheConfig",
    "ConfigError",
    "MetricsConfig",
    "ModelDeployment",
    "AlertsConfig",
    "AuthConfig",
    "JwtConfig",
    "SecurityConfig",
    "TlsConfig",
    "DriftConfig",
    "FeedbackConfig",
    "MonitoringConfig",
    "PredictionLogConfig",
    "Settings",
    "TracingConfig",
    "field_doc",
    "masked",
    "render_yaml",
    "secret_from_env",
]
