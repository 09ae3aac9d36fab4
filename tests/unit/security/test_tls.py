"""ServerTls (the checks at start-up, what uvicorn and gRPC get) and the client's TLS and token arguments,
without sockets: certificates made by trustme, the client against an in-process ASGI app."""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import pytest
import trustme
from cryptography.hazmat.primitives import serialization
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from shipyard.client import AsyncClient, Client
from shipyard.client._tls import ClientTls, closed_hint, handshake_error_text
from shipyard.config import Settings, TlsConfig
from shipyard.errors import ConfigError, ShipyardError
from shipyard.security.tls import CIPHERS, ServerTls, split_pem


@dataclass
class Files:
    ca: Path
    cert: Path
    key: Path
    both: Path
    other_key: Path


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Files:
    d = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    issued = ca.issue_cert("127.0.0.1", "localhost")
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    issued.cert_chain_pems[0].write_to_path(str(d / "cert.pem"))
    issued.private_key_pem.write_to_path(str(d / "key.pem"))
    issued.private_key_and_cert_chain_pem.write_to_path(str(d / "both.pem"))
    trustme.CA().issue_cert("other").private_key_pem.write_to_path(str(d / "other.key"))
    return Files(d / "ca.pem", d / "cert.pem", d / "key.pem", d / "both.pem", d / "other.key")


def config_error(**kwargs: str) -> str:
    with pytest.raises(ConfigError) as info:
        ServerTls(TlsConfig(**kwargs))
    return str(info.value)


# -- the server: files checked at start-up ---------------------------------------------------------


def test_tls_is_off_without_a_certfile() -> None:
    assert ServerTls.from_config(TlsConfig()) is None
    assert ServerTls.from_config(Settings().security.tls) is None


def test_a_missing_file_is_named_with_its_setting(files: Files, tmp_path: Path) -> None:
    missing = tmp_path / "nope.pem"
    assert config_error(certfile=str(missing)) == f"security.tls.certfile: {missing} does not exist"
    assert config_error(certfile=str(files.cert), keyfile=str(missing)) == \
        f"security.tls.keyfile: {missing} does not exist"
    message = config_error(certfile=str(files.both), ca_file=str(missing), client_auth="required")
    assert message == f"security.tls.ca_file: {missing} does not exist"
    assert config_error(certfile=str(tmp_path)) == f"security.tls.certfile: {tmp_path} is not a file"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode; run as another user")
def test_an_unreadable_key_is_named(files: Files, tmp_path: Path) -> None:
    key = tmp_path / "key.pem"
    key.write_bytes(files.key.read_bytes())
    key.chmod(0)
    assert config_error(certfile=str(files.cert), keyfile=str(key)) == \
        f"security.tls.keyfile: {key} is not readable by this user"


def test_client_auth_without_ca_file_is_refused(files: Files) -> None:
    with pytest.raises(ConfigError, match=r"security\.tls\.client_auth needs security\.tls\.ca_file"):
        TlsConfig(certfile=str(files.both), client_auth="required")
    with pytest.raises(ConfigError, match="none, optional or required"):
        TlsConfig(certfile=str(files.both), client_auth="sometimes")


def test_a_key_that_does_not_match_the_certificate_is_refused(files: Files) -> None:
    message = config_error(certfile=str(files.cert), keyfile=str(files.other_key))
    assert message.startswith("security.tls.certfile and keyfile: cannot load a certificate and its private key")
    assert "KEY_VALUES_MISMATCH" in message and str(files.other_key) in message


def test_a_certfile_without_the_key_and_no_keyfile_is_refused(files: Files) -> None:
    message = config_error(certfile=str(files.cert))
    assert f"from {files.cert} (no keyfile: the key must be in it): no PEM certificate and key found" in message


def test_a_file_that_is_not_pem_is_refused(files: Files, tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    assert "no PEM certificate and key found" in config_error(certfile=str(junk), keyfile=str(files.key))
    message = config_error(certfile=str(files.both), ca_file=str(junk))
    assert message.startswith(f"security.tls.ca_file: no PEM CA certificate could be read from {junk}")


def test_an_encrypted_key_is_refused_instead_of_prompting(files: Files, tmp_path: Path) -> None:
    key = serialization.load_pem_private_key(files.key.read_bytes(), None)
    encrypted = tmp_path / "encrypted.pem"
    encrypted.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.BestAvailableEncryption(b"secret")))
    message = config_error(certfile=str(files.cert), keyfile=str(encrypted))
    assert f"the private key in {encrypted} is encrypted, which is not supported" in message


@pytest.mark.parametrize(("client_auth", "reqs"), [("none", ssl.CERT_NONE), ("optional", ssl.CERT_OPTIONAL),
                                                   ("required", ssl.CERT_REQUIRED)])
def test_uvicorn_gets_the_files_and_the_client_certificate_policy(files: Files, client_auth: str,
                                                                  reqs: ssl.VerifyMode) -> None:
    tls = ServerTls(TlsConfig(certfile=str(files.cert), keyfile=str(files.key), ca_file=str(files.ca),
                              client_auth=client_auth))
    assert tls.uvicorn_kwargs() == {
        "ssl_certfile": str(files.cert), "ssl_keyfile": str(files.key), "ssl_ca_certs": str(files.ca),
        "ssl_cert_reqs": reqs, "ssl_version": ssl.PROTOCOL_TLS_SERVER, "ssl_ciphers": CIPHERS,
    }
    ctx = tls.context()
    assert ctx.verify_mode == reqs and ctx.minimum_version == ssl.TLSVersion.TLSv1_2


def test_the_ciphers_are_forward_secret_aead_only(files: Files) -> None:
    ctx = ServerTls(TlsConfig(certfile=str(files.both))).context()
    tls12 = [c["name"] for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.2"]
    assert tls12 and all(("ECDHE" in n or "DHE" in n) and ("GCM" in n or "CHACHA20" in n) for n in tls12), tls12
    assert ServerTls(TlsConfig(certfile=str(files.both))).uvicorn_kwargs()["ssl_keyfile"] is None


def test_grpc_credentials_from_separate_files_and_from_one(files: Files) -> None:
    for config in (TlsConfig(certfile=str(files.cert), keyfile=str(files.key), ca_file=str(files.ca),
                             client_auth="required"),
                   TlsConfig(certfile=str(files.both))):
        assert isinstance(ServerTls(config).grpc_credentials(), grpc.ServerCredentials)


def test_split_pem_separates_certificates_from_the_key(files: Files) -> None:
    certs, key = split_pem(files.both.read_bytes())
    assert certs.count(b"-----BEGIN CERTIFICATE-----") == 1 and b"PRIVATE KEY" not in certs
    assert key.startswith(b"-----BEGIN ") and b"PRIVATE KEY-----" in key and b"CERTIFICATE" not in key
    assert split_pem(b"junk") == (b"", b"")


# -- the client ------------------------------------------------------------------------------------


def test_tls_arguments_need_a_tls_url(files: Files) -> None:
    for url in ("http://127.0.0.1:8000", "grpc://127.0.0.1:8001"):
        with pytest.raises(ConfigError, match="apply to https:// and grpcs:// URLs"):
            AsyncClient(url, ca_file=files.ca)
    with pytest.raises(ConfigError, match="give cert too"):
        AsyncClient("https://127.0.0.1:8000", key=files.key)
    with pytest.raises(ConfigError, match="do not apply with http_transport"):
        AsyncClient("https://127.0.0.1:8000", ca_file=files.ca, http_transport=httpx.ASGITransport(Starlette()))


def test_client_files_are_checked_when_the_client_is_made(files: Files, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=f"ca_file: {tmp_path / 'no.pem'} does not exist"):
        Client("https://127.0.0.1:8000", ca_file=tmp_path / "no.pem")
    with pytest.raises(ConfigError, match="ca_file: no PEM CA certificate could be read"):
        AsyncClient("grpcs://127.0.0.1:8001", ca_file=files.key)
    with pytest.raises(ConfigError, match="cert: cannot load a client certificate.*KEY_VALUES_MISMATCH"):
        AsyncClient("https://127.0.0.1:8000", cert=files.cert, key=files.other_key)
    with pytest.raises(ConfigError, match="no key given: it must be in it"):
        AsyncClient("https://127.0.0.1:8000", cert=files.cert)


def test_client_context_verifies_the_server_and_presents_the_certificate(files: Files) -> None:
    tls = ClientTls.build(files.ca, files.both, None)
    ctx = tls.ssl_context()
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert tls.grpc_roots() == files.ca.read_bytes()
    key, chain = tls.grpc_identity()
    assert key is not None and b"PRIVATE KEY" in key and chain is not None and b"CERTIFICATE" in chain
    assert ClientTls.build(None, None, None).grpc_identity() == (None, None)


def test_token_is_sent_as_a_bearer_authorization_header() -> None:
    seen: list[str | None] = []

    async def live(request: Request) -> Response:
        seen.append(request.headers.get("authorization"))
        return JSONResponse({"live": True})

    app = Starlette(routes=[Route("/v2/health/live", live), Route("/v2/health/ready", live)])
    with Client("http://testserver", token="sk_123", http_transport=httpx.ASGITransport(app)) as client:
        assert client.health() == {"live": True, "ready": True}
    assert seen == ["Bearer sk_123", "Bearer sk_123"]


def test_token_and_an_authorization_header_conflict() -> None:
    with pytest.raises(ConfigError, match="not both"):
        AsyncClient("http://127.0.0.1:8000", token="t", headers={"authorization": "Bearer u"})
    with pytest.raises(ConfigError, match="without 'Bearer '"):
        AsyncClient("http://127.0.0.1:8000", token="Bearer t")


def test_handshake_failures_say_what_to_do() -> None:
    where = "https://h:1"
    failed = handshake_error_text(
        "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: self-signed certificate in certificate chain "
        "(_ssl.c:1006)", where)
    assert isinstance(failed, ShipyardError)
    assert str(failed) == ("the certificate of https://h:1 could not be verified (self-signed certificate in "
                           "certificate chain); if the server's certificate is signed by a private CA, pass "
                           "ca_file=PATH (that CA's certificate, PEM)")
    assert "pass cert=PATH and key=PATH" in str(handshake_error_text("TLSV13_ALERT_CERTIFICATE_REQUIRED", where))
    assert "refused the TLS handshake" in str(handshake_error_text("SSLV3_ALERT_BAD_CERTIFICATE", where))
    assert handshake_error_text("Connection refused", where) is None
    assert "pass cert=PATH" in closed_hint(ClientTls())
    assert closed_hint(None) == ""


def test_a_name_mismatch_says_to_use_a_listed_name_not_ca_file() -> None:
    text = ("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: Hostname mismatch, certificate is not valid "
            "for 'localhost'. (_ssl.c:1006)")
    message = str(handshake_error_text(text, "https://localhost:1"))
    assert "not valid for that host name" in message and "ca_file" not in message
