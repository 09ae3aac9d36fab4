"""The shipyard.yaml a container reads: the user's settings that differ from the defaults, minus secrets,
plus what every container needs (listen on all interfaces, a writable home, credentials required)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import msgspec

from shipyard.config import Settings

__all__ = ["CONTAINER_HOME", "CONFIG_PATH", "SECRET_SETTINGS", "container_config"]

CONTAINER_HOME = "/var/lib/shipyard"
"""SHIPYARD_HOME inside the container: the artifact cache (a writable volume under a read-only root)."""

CONFIG_PATH = "/etc/shipyard/shipyard.yaml"
"""Where the container reads its shipyard.yaml (SHIPYARD_CONFIG)."""

SECRET_SETTINGS = ("registry_url",)
"""Settings never written into a file or a ConfigMap: they come from a Secret as environment variables."""


def _diff(value: Any, default: Any) -> Any:
    """The parts of ``value`` (plain data) that differ from ``default``; ``None`` when nothing does."""
    if isinstance(value, dict) and isinstance(default, dict):
        out = {k: d for k, v in value.items() if (d := _diff(v, default.get(k))) is not None}
        return out or None
    return None if value == default else value


def container_config(settings: Settings, model: str, *, port: int = 8000, grpc_port: int | None = None,
                     insecure: bool = False) -> dict[str, Any]:
    """The shipyard.yaml (as data) of a container serving ``model`` with ``settings``.

    Args:
        settings: the user's settings; those left at their default are left out, secrets always.
        model: the reference served.
        port: the REST port inside the container.
        grpc_port: the gRPC port, or None for no gRPC.
        insecure: serve without credentials (``security.insecure``) instead of requiring API keys or JWTs.
    """
    data = msgspec.to_builtins(asdict(settings), enc_hook=str)
    defaults = msgspec.to_builtins(asdict(Settings()), enc_hook=str)
    out: dict[str, Any] = _diff(data, defaults) or {}
    for name in (*SECRET_SETTINGS, "home", "host", "port", "grpc_port", "models", "graph", "workers"):
        out.pop(name, None)
    config: dict[str, Any] = {"host": "0.0.0.0", "port": port}
    if grpc_port is not None:
        config["grpc_port"] = grpc_port
    config["home"] = CONTAINER_HOME
    config.update(out)
    config["models"] = [{"ref": model}]
    security = config.setdefault("security", {})
    if insecure:
        security["insecure"] = True
    else:
        security.setdefault("auth", {})["enabled"] = True
    return config
