"""JwtVerifier against real keys, real signatures and a real JWKS endpoint on 127.0.0.1."""

from __future__ import annotations

import asyncio
import base64
import datetime
import hashlib
import hmac
import json
import logging
import socket
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from shipyard.config import JwtConfig
from shipyard.errors import ConfigError, MissingDependency, Unauthenticated
from shipyard.security.jwt import MAX_TOKEN_BYTES, REFETCH_SECONDS, JwtVerifier

NOW = 1_700_000_000.0
ISSUER = "https://id.example.test/"
AUDIENCE = "shipyard-test"


pytestmark = pytest.mark.integration  # a real HTTP server serves the JWKS


class JwtLog(logging.Handler):
    """What ``shipyard.security.jwt`` logs, read straight off its logger: whatever another test did to the
    propagation or levels of the loggers above it (pytest's caplog listens at the root)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


@pytest.fixture
def caplog() -> Iterator[JwtLog]:
    handler = JwtLog()
    logger = logging.getLogger("shipyard.security.jwt")
    saved = (logger.level, logger.disabled)
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.disabled = False
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.disabled = saved[1]


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def rsa_key2() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def jwk(private: Any, kid: str | None, alg: str | None = None) -> dict[str, Any]:
    algorithm = jwt.algorithms.RSAAlgorithm if isinstance(private, rsa.RSAPrivateKey) else jwt.algorithms.ECAlgorithm
    entry: dict[str, Any] = dict(algorithm.to_jwk(private.public_key(), as_dict=True))
    if kid is not None:
        entry["kid"] = kid
    if alg is not None:
        entry["alg"] = alg
    return entry


def claims(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "exp": NOW + 300, "iat": NOW,
                            "scope": "predict read", "jti": "tok-1"}
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


def mint(private: Any, body: dict[str, Any] | None = None, *, alg: str = "RS256", kid: str | None = "k1") -> str:
    headers = {"kid": kid} if kid is not None else {}
    return jwt.encode(body if body is not None else claims(), private, algorithm=alg, headers=headers)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def pem(public: Any) -> bytes:
    return bytes(public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))


def refused(verifier: JwtVerifier, token: str) -> str:
    """The refusal's message, checked not to leak the token."""
    with pytest.raises(Unauthenticated) as info:
        verifier.verify(token)
    message = str(info.value)
    assert token not in message
    for part in token.split("."):
        if len(part) > 8:
            assert part not in message
    return message


@dataclass
class JwksServer:
    """A provider's JWKS endpoint: serves ``keys``, counts the GETs it answered."""

    keys: list[dict[str, Any]] = field(default_factory=list)
    status: int = 200
    hits: int = 0
    url: str = ""
    http: ThreadingHTTPServer | None = None

    def start(self) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                outer.hits += 1
                body = json.dumps({"keys": outer.keys}).encode()
                self.send_response(outer.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}/.well-known/jwks.json"
        threading.Thread(target=self.http.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()

    def stop(self) -> None:
        if self.http is not None:
            self.http.shutdown()
            self.http.server_close()
            self.http = None


@pytest.fixture
def jwks(rsa_key: rsa.RSAPrivateKey) -> Iterator[JwksServer]:
    server = JwksServer(keys=[jwk(rsa_key, "k1")])
    server.start()
    try:
        yield server
    finally:
        server.stop()


def config(**changes: Any) -> JwtConfig:
    return JwtConfig(**{"issuer": ISSUER, "audience": AUDIENCE, **changes})


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def verifier(jwks: JwksServer, clock: Clock) -> JwtVerifier:
    v = JwtVerifier(config(jwks_url=jwks.url), clock=clock)
    v.load()
    return v


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/jwks.json"


# -- accepted tokens ----------------------------------------------------------------------------------------


def test_valid_token_becomes_a_jwt_principal(verifier: JwtVerifier, rsa_key: rsa.RSAPrivateKey) -> None:
    principal = verifier.verify(mint(rsa_key))
    assert (principal.name, principal.kind, principal.key_id) == ("alice", "jwt", "tok-1")
    assert principal.scopes == {"predict", "read"}
    assert principal.models is None


def test_jti_is_optional(verifier: JwtVerifier, rsa_key: rsa.RSAPrivateKey) -> None:
    assert verifier.verify(mint(rsa_key, claims(jti=None))).key_id is None


def test_space_separated_scope_keeps_only_known_scopes(verifier: JwtVerifier, rsa_key: rsa.RSAPrivateKey) -> None:
    token = mint(rsa_key, claims(scope="openid profile feedback  admin"))
    assert verifier.verify(token).scopes == {"feedback", "admin"}


def test_list_scope_claim_keeps_only_known_scopes(verifier: JwtVerifier, rsa_key: rsa.RSAPrivateKey) -> None:
    token = mint(rsa_key, claims(scope=["predict", "email", 7, "admin"]))
    assert verifier.verify(token).scopes == {"predict", "admin"}


def test_scope_claim_name_comes_from_config(jwks: JwksServer, clock: Clock, rsa_key: rsa.RSAPrivateKey) -> None:
    v = JwtVerifier(config(jwks_url=jwks.url, scope_claim="scp"), clock=clock)
    v.load()
    assert v.verify(mint(rsa_key, claims(scp=["read"]))).scopes == {"read"}


def test_token_without_known_scope_is_authenticated_with_no_scopes(
    verifier: JwtVerifier, rsa_key: rsa.RSAPrivateKey
) -> None:
    for scope in ("openid email", None, 42):
        principal = verifier.verify(mint(rsa_key, claims(scope=scope)))
        assert principal.name == "alice"
        assert principal.scopes == frozenset()
        assert not principal.allows("predict")


def test_models_claim_limits_the_models(verifier: JwtVerifier, rsa_key: rsa.RSAPrivateKey) -> None:
    principal = verifier.verify(mint(rsa_key, claims(models=["fraud", "churn"])))
    assert principal.models == {"fraud", "churn"}
    assert principal.may_use("fraud") and not principal.may_use("iris")


def test_models_claim_that_is_not_a_list_is_refused(verifier: JwtVerifier, rsa_key: rsa.RSAPrivateKey) -> None:
    assert "'models' claim is not a list" in refused(verifier, mint(rsa_key, claims(models="fraud")))


def test_ec_key_verifies_es256(jwks: JwksServer, clock: Clock, ec_key: ec.EllipticCurvePrivateKey) -> None:
    jwks.keys.append(jwk(ec_key, "e1"))
    v = JwtVerifier(config(jwks_url=jwks.url), clock=clock)
    v.load()
    assert v.verify(mint(ec_key, alg="ES256", kid="e1")).name == "alice"


def test_audience_may_be_a_list(verifier: JwtVerifier, rsa_key: rsa.RSAPrivateKey) -> None:
    assert verifier.verify(mint(rsa_key, claims(aud=["other", AUDIENCE]))).name == "alice"


def test_leeway_allows_small_clock_skew(verifier: JwtVerifier, rsa_key: rsa.RSAPrivateKey, clock: Clock) -> None:
    token = mint(rsa_key, claims(nbf=NOW + 20, iat=NOW + 20))
    assert verifier.verify(token).name == "alice"  # 20 s ahead, leeway 30 s
    clock.now = NOW + 300 + 20  # 20 s past exp
    assert verifier.verify(token).name == "alice"


def test_token_without_kid_uses_the_only_key(verifier: JwtVerifier, rsa_key: rsa.RSAPrivateKey) -> None:
    assert verifier.verify(mint(rsa_key, kid=None)).name == "alice"


# -- refusals -----------------------------------------------------------------------------------------------


def test_token_longer_than_8_kib_is_refused_before_parsing(verifier: JwtVerifier) -> None:
    token = "x" * (MAX_TOKEN_BYTES + 1)  # not even a JWT: the length is checked first
    assert "longer than 8192 bytes" in refused(verifier, token)


def test_large_valid_token_is_refused(verifier: JwtVerifier, rsa_key: rsa.RSAPrivateKey) -> None:
    token = mint(rsa_key, claims(padding="p" * MAX_TOKEN_BYTES))
    assert "longer than" in refused(verifier, token)


@pytest.mark.parametrize("token", ["", "abc", "abc.def", "a.b.c.d", "ab c.def.ghi", "abc.de+f.ghi", "abc.def.g=="])
def test_token_that_is_not_three_base64url_parts_is_refused(verifier: JwtVerifier, token: str) -> None:
    with pytest.raises(Unauthenticated, match="not a JWT"):
        verifier.verify(token)


def test_header_that_is_not_json_is_refused(verifier: JwtVerifier) -> None:
    token = f"{b64(b'not json')}.{b64(b'{}')}.{b64(b'sig')}"
    assert "header is not base64url-encoded JSON" in refused(verifier, token)


def test_unsigned_token_is_refused(verifier: JwtVerifier) -> None:
    for alg in ("none", "None", "NONE"):
        header = b64(json.dumps({"alg": alg, "kid": "k1"}).encode())
        token = f"{header}.{b64(json.dumps(claims()).encode())}."
        assert "unsigned (alg 'none')" in refused(verifier, token)


def test_hmac_token_signed_with_the_public_key_is_refused(
    verifier: JwtVerifier, rsa_key: rsa.RSAPrivateKey
) -> None:
    # The classic confusion: HS256 with the server's public PEM as the shared secret.
    header = b64(json.dumps({"alg": "HS256", "kid": "k1"}).encode())
    signing_input = f"{header}.{b64(json.dumps(claims()).encode())}"
    signature = hmac.new(pem(rsa_key.public_key()), signing_input.encode(), hashlib.sha256).digest()
    assert "HMAC, never accepted" in refused(verifier, f"{signing_input}.{b64(signature)}")


def test_hmac_is_not_an_accepted_algorithm() -> None:
    with pytest.raises(ConfigError, match="HS256 not accepted"):
        config(key_file="k.pem", algorithms=("RS256", "HS256"))


def test_algorithm_outside_the_configured_ones_is_refused(
    verifier: JwtVerifier, rsa_key: rsa.RSAPrivateKey
) -> None:
    message = refused(verifier, mint(rsa_key, alg="RS384"))
    assert "'RS384' is not in security.auth.jwt.algorithms (RS256, ES256)" in message


def test_algorithm_that_does_not_fit_the_key_is_refused(
    jwks: JwksServer, clock: Clock, rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    v = JwtVerifier(config(jwks_url=jwks.url), clock=clock)
    v.load()
    # Signed with an EC key but naming the RSA key's kid.
    assert "does not fit the key" in refused(v, mint(ec_key, alg="ES256", kid="k1"))


def test_algorithm_other_than_the_one_the_jwk_names_is_refused(
    jwks: JwksServer, clock: Clock, rsa_key: rsa.RSAPrivateKey
) -> None:
    jwks.keys = [jwk(rsa_key, "k1", alg="RS256")]
    v = JwtVerifier(config(jwks_url=jwks.url, algorithms=("RS256", "PS256")), clock=clock)
    v.load()
    assert v.verify(mint(rsa_key)).name == "alice"
    assert "does not match the key's algorithm RS256" in refused(v, mint(rsa_key, alg="PS256"))


def test_unknown_kid_is_refused(verifier: JwtVerifier, rsa_key: rsa.RSAPrivateKey, jwks: JwksServer) -> None:
    hits = jwks.hits
    assert "key id 'k9' is not among the signing keys" in refused(verifier, mint(rsa_key, kid="k9"))
    assert jwks.hits == hits  # verify never goes to the network


def test_bad_signature_is_refused(verifier: JwtVerifier, rsa_key2: rsa.RSAPrivateKey) -> None:
    assert "bad signature" in refused(verifier, mint(rsa_key2, kid="k1"))


def test_tampered_payload_is_refused(verifier: JwtVerifier, rsa_key: rsa.RSAPrivateKey) -> None:
    header, _, signature = mint(rsa_key).split(".")
    forged = b64(json.dumps(claims(scope="admin")).encode())
    assert "bad signature" in refused(verifier, f"{header}.{forged}.{signature}")


def test_expired_token_is_refused(verifier: JwtVerifier, rsa_key: rsa.RSAPrivateKey, clock: Clock) -> None:
    token = mint(rsa_key)
    assert verifier.verify(token).name == "alice"
    clock.now = NOW + 300 + 31  # past exp and the 30 s leeway
    assert "expired" in refused(verifier, token)


def test_token_without_exp_is_refused(verifier: JwtVerifier, rsa_key: rsa.RSAPrivateKey) -> None:
    assert "no expiry ('exp' claim)" in refused(verifier, mint(rsa_key, claims(exp=None)))


def test_non_numeric_exp_is_refused(verifier: JwtVerifier, rsa_key: rsa.RSAPrivateKey) -> None:
    assert "'exp' claim is not a number" in refused(verifier, mint(rsa_key, claims(exp="tomorrow")))


def test_token_not_valid_yet_is_refused(verifier: JwtVerifier, rsa_key: rsa.RSAPrivateKey, clock: Clock) -> None:
    token = mint(rsa_key, claims(nbf=NOW + 60))
    assert "not valid yet" in refused(verifier, token)
    clock.now = NOW + 31
    assert verifier.verify(token).name == "alice"


def test_token_issued_in_the_future_is_refused(verifier: JwtVerifier, rsa_key: rsa.RSAPrivateKey) -> None:
    assert "issued in the future" in refused(verifier, mint(rsa_key, claims(iat=NOW + 60)))


def test_wrong_issuer_is_refused(verifier: JwtVerifier, rsa_key: rsa.RSAPrivateKey) -> None:
    message = refused(verifier, mint(rsa_key, claims(iss="https://evil.example.test/")))
    assert f"issuer ('iss') is not {ISSUER!r}" in message
    assert "evil" not in message


def test_wrong_audience_is_refused(verifier: JwtVerifier, rsa_key: rsa.RSAPrivateKey) -> None:
    for aud in ("other", ["other", "another"], None):
        assert "audience ('aud') does not include" in refused(verifier, mint(rsa_key, claims(aud=aud)))


def test_token_without_subject_is_refused(verifier: JwtVerifier, rsa_key: rsa.RSAPrivateKey) -> None:
    for sub in (None, ""):
        assert "no subject ('sub' claim)" in refused(verifier, mint(rsa_key, claims(sub=sub)))


def test_token_without_kid_is_refused_when_the_provider_has_several_keys(
    jwks: JwksServer, clock: Clock, rsa_key: rsa.RSAPrivateKey, rsa_key2: rsa.RSAPrivateKey
) -> None:
    jwks.keys.append(jwk(rsa_key2, "k2"))
    v = JwtVerifier(config(jwks_url=jwks.url), clock=clock)
    v.load()
    assert "names no key ('kid')" in refused(v, mint(rsa_key, kid=None))


def test_verify_before_load_says_the_keys_are_not_loaded(
    jwks: JwksServer, clock: Clock, rsa_key: rsa.RSAPrivateKey
) -> None:
    v = JwtVerifier(config(jwks_url=jwks.url), clock=clock)
    assert "not loaded yet" in refused(v, mint(rsa_key))
    assert jwks.hits == 0


# -- key rotation and refresh -------------------------------------------------------------------------------


def test_new_kid_is_accepted_after_one_refetch_and_refetches_are_rate_limited(
    verifier: JwtVerifier, jwks: JwksServer, clock: Clock, rsa_key: rsa.RSAPrivateKey, rsa_key2: rsa.RSAPrivateKey
) -> None:
    assert jwks.hits == 1  # load()
    rotated = mint(rsa_key2, kid="k2")
    jwks.keys.append(jwk(rsa_key2, "k2"))  # the provider rotates
    refused(verifier, rotated)  # the sync path only knows the keys held

    async def run() -> None:
        assert (await verifier.verify_async(rotated)).name == "alice"
        assert jwks.hits == 2
        # A second unknown kid within 10 s: refused without asking the provider again.
        clock.now += REFETCH_SECONDS - 1
        with pytest.raises(Unauthenticated, match="'k3' is not among"):
            await verifier.verify_async(mint(rsa_key, kid="k3"))
        assert jwks.hits == 2
        # After 10 s, an unknown kid may refetch again.
        clock.now += 2
        with pytest.raises(Unauthenticated, match="'k3' is not among"):
            await verifier.verify_async(mint(rsa_key, kid="k3"))
        assert jwks.hits == 3

    asyncio.run(run())
    assert verifier.verify(rotated).name == "alice"  # now held: the sync path accepts it


def test_concurrent_unknown_kids_share_one_refetch(
    verifier: JwtVerifier, jwks: JwksServer, rsa_key2: rsa.RSAPrivateKey
) -> None:
    jwks.keys.append(jwk(rsa_key2, "k2"))
    token = mint(rsa_key2, kid="k2")

    async def run() -> list[str]:
        principals = await asyncio.gather(*(verifier.verify_async(token) for _ in range(20)))
        return [p.name for p in principals]

    assert asyncio.run(run()) == ["alice"] * 20
    assert jwks.hits == 2


def test_verify_async_loads_keys_not_loaded_at_start(
    jwks: JwksServer, clock: Clock, rsa_key: rsa.RSAPrivateKey
) -> None:
    v = JwtVerifier(config(jwks_url=jwks.url), clock=clock)
    assert asyncio.run(v.verify_async(mint(rsa_key))).name == "alice"
    assert jwks.hits == 1


def test_retired_key_stops_working_after_refresh(
    verifier: JwtVerifier, jwks: JwksServer, rsa_key: rsa.RSAPrivateKey, rsa_key2: rsa.RSAPrivateKey
) -> None:
    jwks.keys = [jwk(rsa_key2, "k2")]
    assert verifier.refresh()
    assert "'k1' is not among" in refused(verifier, mint(rsa_key))


def test_unreachable_refresh_keeps_the_old_keys(
    verifier: JwtVerifier, jwks: JwksServer, rsa_key: rsa.RSAPrivateKey, caplog: JwtLog
) -> None:
    jwks.stop()
    assert verifier.refresh() is False
    assert "keeping the 1 JWT signing key(s) held" in caplog.text
    assert verifier.verify(mint(rsa_key)).name == "alice"


def test_unknown_kid_with_the_provider_unreachable_is_refused(
    verifier: JwtVerifier, jwks: JwksServer, rsa_key2: rsa.RSAPrivateKey, caplog: JwtLog
) -> None:
    jwks.stop()
    with pytest.raises(Unauthenticated, match="'k2' is not among"):
        asyncio.run(verifier.verify_async(mint(rsa_key2, kid="k2")))
    assert "cannot fetch the JWT signing keys" in caplog.text


def test_failing_refresh_keeps_the_old_keys(
    verifier: JwtVerifier, jwks: JwksServer, rsa_key: rsa.RSAPrivateKey
) -> None:
    jwks.status = 503
    assert verifier.refresh() is False
    jwks.status, jwks.keys = 200, []  # reachable, but no key: still kept
    assert verifier.refresh() is False
    assert verifier.verify(mint(rsa_key)).name == "alice"


def test_watch_picks_up_new_keys_and_stops(
    jwks: JwksServer, clock: Clock, rsa_key2: rsa.RSAPrivateKey
) -> None:
    v = JwtVerifier(config(jwks_url=jwks.url), clock=clock, watch_seconds=0.01)
    v.load()
    jwks.keys.append(jwk(rsa_key2, "k2"))

    async def run() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(v.watch(stop))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 20
        while "k2" not in v.key_ids and loop.time() < deadline:
            await asyncio.sleep(0.01)
        stop.set()
        await asyncio.wait_for(task, 20)

    asyncio.run(run())
    assert v.verify(mint(rsa_key2, kid="k2")).name == "alice"


def test_watch_keeps_keys_when_the_provider_goes_away(
    jwks: JwksServer, clock: Clock, rsa_key: rsa.RSAPrivateKey, caplog: JwtLog
) -> None:
    v = JwtVerifier(config(jwks_url=jwks.url), clock=clock, watch_seconds=0.01)
    v.load()
    jwks.stop()

    async def run() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(v.watch(stop))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 20
        while caplog.text.count("keeping the 1 JWT signing key(s)") < 2 and loop.time() < deadline:
            await asyncio.sleep(0.01)
        stop.set()
        await asyncio.wait_for(task, 20)

    asyncio.run(run())
    assert caplog.text.count("keeping the 1 JWT signing key(s)") >= 2
    assert v.verify(mint(rsa_key)).name == "alice"


# -- loading keys -------------------------------------------------------------------------------------------


def test_unreachable_jwks_at_load_is_a_clear_error(clock: Clock) -> None:
    url = closed_port_url()
    v = JwtVerifier(config(jwks_url=url), clock=clock)
    with pytest.raises(ConfigError, match="cannot fetch the JWT signing keys from") as info:
        v.load()
    assert url in str(info.value) and "reachable" in str(info.value)


def test_jwks_error_status_at_load_is_a_clear_error(jwks: JwksServer, clock: Clock) -> None:
    jwks.status = 500
    with pytest.raises(ConfigError, match="it answered 500"):
        JwtVerifier(config(jwks_url=jwks.url), clock=clock).load()


def test_jwks_without_usable_keys_is_refused_at_load(
    jwks: JwksServer, clock: Clock, caplog: JwtLog
) -> None:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    jwks.keys = [
        {"kty": "oct", "k": b64(b"shared-secret"), "kid": "h1"},  # HMAC: never
        jwk(weak, "w1"),  # too short
        {**jwk(weak, "e1"), "use": "enc"},
        {"kty": "RSA", "kid": "broken"},
    ]
    with pytest.raises(ConfigError, match="no usable signing key"):
        JwtVerifier(config(jwks_url=jwks.url), clock=clock).load()
    assert "symmetric key 'h1'" in caplog.text and "1024 bits is too short" in caplog.text


def test_key_file_as_pem(tmp_path: Path, clock: Clock, rsa_key: rsa.RSAPrivateKey) -> None:
    path = tmp_path / "idp.pem"
    path.write_bytes(pem(rsa_key.public_key()))
    v = JwtVerifier(config(key_file=str(path)), clock=clock)  # read at construction
    assert v.verify(mint(rsa_key, kid="any")).name == "alice"
    assert v.verify(mint(rsa_key, kid=None)).name == "alice"


def test_key_file_as_certificate(tmp_path: Path, clock: Clock, ec_key: ec.EllipticCurvePrivateKey) -> None:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "id.example.test")])
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(ec_key.public_key())
        .serial_number(1).not_valid_before(datetime.datetime(2023, 1, 1, tzinfo=datetime.UTC))
        .not_valid_after(datetime.datetime(2033, 1, 1, tzinfo=datetime.UTC)).sign(ec_key, hashes.SHA256())
    )
    path = tmp_path / "idp.crt"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    v = JwtVerifier(config(key_file=str(path)), clock=clock)
    assert v.verify(mint(ec_key, alg="ES256")).name == "alice"


def test_key_file_as_jwks(
    tmp_path: Path, clock: Clock, rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [jwk(rsa_key, "r1"), jwk(ec_key, "e1")]}))
    v = JwtVerifier(config(key_file=str(path)), clock=clock)
    assert v.verify(mint(rsa_key, kid="r1")).name == "alice"
    assert v.verify(mint(ec_key, alg="ES256", kid="e1")).name == "alice"
    assert "'r2' is not among" in refused(v, mint(rsa_key, kid="r2"))


def test_key_file_with_a_private_key_is_refused(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    path = tmp_path / "private.pem"
    path.write_bytes(rsa_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    with pytest.raises(ConfigError, match="holds a private key: give the public key only"):
        JwtVerifier(config(key_file=str(path)))


def test_missing_or_garbled_key_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot be read"):
        JwtVerifier(config(key_file=str(tmp_path / "absent.pem")))
    garbled = tmp_path / "garbled.txt"
    garbled.write_text("hello")
    with pytest.raises(ConfigError, match="neither a PEM public key nor a JWKS"):
        JwtVerifier(config(key_file=str(garbled)))


def test_verifier_needs_jwt_configured() -> None:
    with pytest.raises(ConfigError, match="set jwks_url or key_file"):
        JwtVerifier(JwtConfig())


def test_missing_pyjwt_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "jwt", None)  # as if PyJWT were not installed
    with pytest.raises(MissingDependency, match=r"pyjwt is not installed.*shipyard\[jwt\]"):
        JwtVerifier(config(jwks_url="https://id.example.test/jwks.json"))
