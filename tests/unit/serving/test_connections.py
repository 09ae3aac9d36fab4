"""Listener limits: settings, environment variables and flags (the behaviour is tested against a real server
in tests/integration/test_listener_limits.py)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from uvicorn.protocols.http.auto import AutoHTTPProtocol

from shipyard.cli.main import cli
from shipyard.config import Settings
from shipyard.errors import ConfigError
from shipyard.serving.connections import http_protocol


def test_limits_have_secure_defaults_and_environment_variables() -> None:
    assert Settings().header_timeout_seconds == 10.0 and Settings().max_connections == 1000
    s = Settings.from_env({"SHIPYARD_HEADER_TIMEOUT_SECONDS": "2.5", "SHIPYARD_MAX_CONNECTIONS": "64"})
    assert (s.header_timeout_seconds, s.max_connections) == (2.5, 64)


@pytest.mark.parametrize(("field", "value", "message"), [
    ("header_timeout_seconds", -1.0, "header_timeout_seconds must not be negative"),
    ("max_connections", 0, "max_connections must be at least 1"),
])
def test_bad_limits_are_refused(field: str, value: float, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings(**{field: value})


def test_serve_has_the_flags() -> None:
    out = CliRunner().invoke(cli, ["serve", "--help"]).output
    assert "--header-timeout" in out and "SHIPYARD_HEADER_TIMEOUT_SECONDS" in out
    assert "--max-connections" in out and "SHIPYARD_MAX_CONNECTIONS" in out


def test_the_protocol_wraps_uvicorns_own() -> None:
    protocol = http_protocol(1.0, 10)
    assert issubclass(protocol, AutoHTTPProtocol) and protocol.__name__ == f"Limited{AutoHTTPProtocol.__name__}"
