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


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_the_authenticator_checks_keys_scopes_and_the_metrics_setting(settings: Settings) -> None:
    from shipyard.errors import PermissionDenied
    from shipyard.registry import Registry
    from shipyard.security.auth import Authenticator
    from shipyard.security.keys import KeyStore

    on = settings.replace(security=SecurityConfig(auth=AuthConfig(enabled=True, metrics="read")))
    registry = Registry.from_settings(on)
    try:
        store = KeyStore(registry.database)
        _, reader = store.create("reader", ["read"])
        _, admin = store.create("boss", ["admin"])
        auth = Authenticator.from_settings(on, registry.database)
        assert auth is not None and Authenticator.from_settings(settings, registry.database) is None
        await auth.start()
        assert await auth.check(None, "open") is None  # health probes
        with pytest.raises(Unauthenticated):
            await auth.check(None, "metrics")  # metrics: read
        assert (await auth.check(f"Bearer {reader}", "metrics")).name == "reader"  # type: ignore[union-attr]
        with pytest.raises(PermissionDenied, match="key 'reader' needs the 'predict' scope"):
            await auth.check(f"Bearer {reader}", "predict")
        for need in ("predict", "feedback", "read", "admin", "authenticated"):  # admin implies every scope
            assert (await auth.check(f"Bearer {admin}", need)).name == "boss"  # type: ignore[union-attr]
        with pytest.raises(Unauthenticated, match="invalid API key"):
            await auth.check("Bearer not-a-key-and-no-jwt-issuer", "read")
        with pytest.raises(AssertionError):
            await auth.check(f"Bearer {admin}", "reed")  # a typo in a route table never passes
    finally:
        registry.close()


def test_requests_carry_their_principal_into_the_prediction_log() -> None:
    from shipyard.context import RequestContext
    from shipyard.monitoring.events import PredictionEvent
    from shipyard.monitoring.predlog import to_record
    from shipyard.security.principal import Principal, acting_as

    with acting_as(Principal("fraud-scorer", "key", frozenset({"predict"})), "10.0.0.7:5000"):
        ctx = RequestContext.new("rest")
    assert ctx.principal == "fraud-scorer" and RequestContext.new("rest").principal is None
    event = PredictionEvent(ctx, "fraud", 3, "champion", None, None, 0.0, 0.001, "ok")
    assert to_record(event)["principal"] == "fraud-scorer"


@pytest.mark.anyio
async def test_a_pool_child_accepts_only_its_pools_key_and_only_to_predict(settings: Settings) -> None:
    import hashlib

    from shipyard.errors import ConfigError, PermissionDenied
    from shipyard.registry import Registry
    from shipyard.security.auth import Authenticator
    from shipyard.security.keys import KeyStore

    key = "sy_pool_" + "k" * 43
    child = settings.replace(security=SecurityConfig(auth=AuthConfig(
        enabled=True, api_keys=False, pool_key_sha256=hashlib.sha256(key.encode()).hexdigest())))
    registry = Registry.from_settings(child)
    try:
        _, stored = KeyStore(registry.database).create("boss", ["admin"])
        auth = Authenticator.from_settings(child, registry.database)
        assert auth is not None
        await auth.start()
        principal = await auth.check(f"Bearer {key}", "predict")
        assert principal is not None and principal.name == "graph step pool"
        for need in ("read", "admin", "feedback"):
            with pytest.raises(PermissionDenied, match="needs the '.*' scope"):
                await auth.check(f"Bearer {key}", need)
        for wrong in (None, f"Bearer {key}x", f"Bearer {stored}"):  # the database's keys are not accepted either
            with pytest.raises(Unauthenticated):
                await auth.check(wrong, "predict")
    finally:
        registry.close()
    with pytest.raises(ConfigError, match="pool_key_sha256 must be a sha256 in hex"):
        AuthConfig(enabled=True, api_keys=False, pool_key_sha256="not-a-digest")
