"""Reading ``Authorization`` and refusing to listen beyond loopback without authentication."""

from __future__ import annotations

import logging

import pytest

from shipyard.config import SecurityConfig, Settings
from shipyard.config._security import AuthConfig
from shipyard.errors import ConfigError, Unauthenticated
from shipyard.security.auth import MAX_CREDENTIAL_BYTES, bearer_token, exposure_check, is_loopback


@pytest.mark.parametrize(("header", "message"), [
    (None, "no credentials"),
    ("", "no credentials"),
    ("Basic dXNlcjpwYXNz", "unsupported authorization scheme 'Basic'"),
    ("Token abc", "unsupported authorization scheme 'Token'"),
    ("Bearer", "malformed credentials"),
    ("Bearer ", "malformed credentials"),
    ("Bearer a b", "malformed credentials"),
    ("Bearer " + "x" * MAX_CREDENTIAL_BYTES, "longer than"),
])
def test_bad_authorization_headers_are_refused_saying_why(header: str | None, message: str) -> None:
    with pytest.raises(Unauthenticated, match=message):
        bearer_token(header)


def test_the_bearer_scheme_is_case_insensitive() -> None:
    assert bearer_token("Bearer sy_abc_def") == "sy_abc_def"
    assert bearer_token("bearer  tok ") == "tok"


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("127.0.0.53", True), ("::1", True), ("[::1]", True), ("localhost", True),
    ("0.0.0.0", False), ("::", False), ("10.0.0.5", False), ("example.com", False),
])
def test_loopback_addresses(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_listening_beyond_loopback_needs_auth_or_insecure(caplog: pytest.LogCaptureFixture) -> None:
    exposure_check(Settings())  # 127.0.0.1 by default
    with pytest.raises(ConfigError, match=r"refusing to listen on 0\.0\.0\.0 without authentication.*"
                                          r"shipyard keys create.*--insecure"):
        exposure_check(Settings(host="0.0.0.0"))
    exposure_check(Settings(host="0.0.0.0", security=SecurityConfig(auth=AuthConfig(enabled=True))))
    with caplog.at_level(logging.WARNING, logger="shipyard.security.auth"):
        exposure_check(Settings(host="0.0.0.0", security=SecurityConfig(insecure=True)))
    assert "INSECURE: listening on 0.0.0.0 with authentication off" in caplog.text
