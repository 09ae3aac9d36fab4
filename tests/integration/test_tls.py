"""TLS and mutual TLS on a real `shipyard serve` process (REST and gRPC), with certificates made here (trustme).

Each server is `python -m shipyard serve demo@champion` on 127.0.0.1 configured through
SHIPYARD_SECURITY__TLS__* variables; the client is shipyard.Client over real sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import trustme

import shipyard
from shipyard.demo import FEATURES
from shipyard.errors import ShipyardError
from shipyard.testing import ServerFailed, free_port
from shipyard.testing._process import stop_process

pytestmark = pytest.mark.integration

ROW = dict.fromkeys(FEATURES, 5.0)


@dataclass
class Pki:
    """A private CA, the server's certificate for 127.0.0.1 (not localhost), a client certificate it signed (key apart,
    and key and certificate in one file), and a client certificate another CA signed; every file PEM."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    client_both: Path
    stranger_both: Path


@dataclass
class TlsServer:
    process: subprocess.Popen[bytes]
    port: int
    grpc_port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def grpc_url(self) -> str:
        return f"grpcs://127.0.0.1:{self.grpc_port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1")
    client = ca.issue_cert("client@example.com")
    stranger = trustme.CA().issue_cert("stranger@example.com")
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    server.private_key_pem.write_to_path(str(d / "server.key"))
    for i, blob in enumerate(server.cert_chain_pems):
        blob.write_to_path(str(d / "server.pem"), append=i > 0)
    client.private_key_pem.write_to_path(str(d / "client.key"))
    for i, blob in enumerate(client.cert_chain_pems):
        blob.write_to_path(str(d / "client.pem"), append=i > 0)
    client.private_key_and_cert_chain_pem.write_to_path(str(d / "client-both.pem"))
    stranger.private_key_and_cert_chain_pem.write_to_path(str(d / "stranger-both.pem"))
    return Pki(d / "ca.pem", d / "server.pem", d / "server.key", d / "client.pem", d / "client.key",
               d / "client-both.pem", d / "stranger-both.pem")


def tls_env(pki: Pki, client_auth: str) -> dict[str, str]:
    env = {"SHIPYARD_SECURITY__TLS__CERTFILE": str(pki.server_cert),
           "SHIPYARD_SECURITY__TLS__KEYFILE": str(pki.server_key)}
    if client_auth != "none":
        env |= {"SHIPYARD_SECURITY__TLS__CA_FILE": str(pki.ca), "SHIPYARD_SECURITY__TLS__CLIENT_AUTH": client_auth}
    return env


@contextlib.contextmanager
def serve_tls(home: Path, pki: Pki, client_auth: str, timeout: float = 60.0) -> Iterator[TlsServer]:
    """`shipyard serve` with TLS on REST and gRPC; ready once /v2/health/ready answers 200 over HTTPS."""
    port, grpc_port = free_port(), free_port()
    log_path = home.parent / f"shipyard-tls-{port}.log"
    env = {**os.environ, "SHIPYARD_HOME": str(home), **tls_env(pki, client_auth)}
    cmd = [sys.executable, "-m", "shipyard", "serve", "demo@champion", "--host", "127.0.0.1", "--port", str(port),
           "--grpc-port", str(grpc_port), "--workers", "1"]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    server = TlsServer(proc, port, grpc_port, log_path)
    # the probe presents the client certificate, so it gets through to an mTLS server too
    probe = ssl.create_default_context(cafile=pki.ca)
    probe.load_cert_chain(pki.client_cert, pki.client_key)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise ServerFailed(f"shipyard serve exited with {proc.returncode}:\n{server.log()}")
            if time.monotonic() > deadline:
                raise ServerFailed(f"shipyard serve was not ready within {timeout:.0f}s:\n{server.log()}")
            try:
                if httpx.get(f"{server.url}/v2/health/ready", verify=probe, timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        yield server
    finally:
        stop_process(proc, "shipyard serve", grace=10)


@pytest.fixture(scope="module")
def tls_server(demo_home: Path, pki: Pki) -> Iterator[TlsServer]:
    with serve_tls(demo_home, pki, "none") as server:
        yield server


@pytest.fixture(scope="module")
def mtls_server(demo_home: Path, pki: Pki) -> Iterator[TlsServer]:
    with serve_tls(demo_home, pki, "required") as server:
        yield server


@pytest.fixture(scope="module")
def optional_server(demo_home: Path, pki: Pki) -> Iterator[TlsServer]:
    with serve_tls(demo_home, pki, "optional") as server:
        yield server


class NoSleep:
    """The client's sleep between tries, recording them: a handshake failure must not be retried."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


def refused(url: str, **kwargs: Any) -> tuple[str, list[float]]:
    """The error a prediction through AsyncClient ends in, and the waits between its tries."""
    sleep = NoSleep()

    async def go() -> None:
        async with shipyard.AsyncClient(url, timeout=20, sleep=sleep, **kwargs) as client:
            await client.predict("demo", [ROW])

    with pytest.raises(ShipyardError) as info:
        asyncio.run(go())
    return str(info.value), sleep.calls


# -- TLS: the client checks the server -----------------------------------------------------------------


@pytest.mark.parametrize("transport", ["rest", "grpc"])
def test_prediction_over_tls_with_the_ca_file(tls_server: TlsServer, pki: Pki, transport: str) -> None:
    url = tls_server.url if transport == "rest" else tls_server.grpc_url
    with shipyard.Client(url, ca_file=pki.ca, timeout=30) as client:
        assert client.health() == {"live": True, "ready": True}
        assert client.predict("demo", [ROW]) == client.predict("demo@champion", [ROW])
        assert list(client.predict("demo", [ROW])[0]) == ["predict"]


@pytest.mark.parametrize("transport", ["rest", "grpc"])
def test_without_the_ca_file_the_client_refuses_the_server_at_once(tls_server: TlsServer, transport: str) -> None:
    url = tls_server.url if transport == "rest" else tls_server.grpc_url
    message, waits = refused(url)
    assert message.startswith(f"the certificate of {url} could not be verified (")
    assert "pass ca_file=PATH" in message
    assert waits == []  # not retried: the same certificate fails the same way


def test_a_certificate_for_another_name_is_refused(tls_server: TlsServer, pki: Pki) -> None:
    # the certificate names 127.0.0.1, not localhost (which leads to the same server)
    message, _ = refused(f"https://localhost:{tls_server.port}", ca_file=pki.ca)
    assert message.startswith(f"the certificate of https://localhost:{tls_server.port} could not be verified: "
                              "it is not valid for that host name")
    assert "use a name the certificate lists" in message


def test_the_listeners_speak_tls_only_and_say_so(tls_server: TlsServer) -> None:
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{tls_server.port}/v2/health/live", timeout=5)
    message, _ = refused(f"grpc://127.0.0.1:{tls_server.grpc_port}")
    assert "cannot reach" in message or "server answered" in message
    log = tls_server.log()
    assert f"listening on https://127.0.0.1:{tls_server.port} (client certificates: none)" in log
    assert f"gRPC listening on grpcs://127.0.0.1:{tls_server.grpc_port}" in log


def test_tls_below_1_2_is_refused(tls_server: TlsServer, pki: Pki) -> None:
    def handshake(maximum: ssl.TLSVersion) -> str:
        ctx = ssl.create_default_context(cafile=pki.ca)
        ctx.minimum_version = ssl.TLSVersion.TLSv1
        ctx.maximum_version = maximum
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")  # this side would speak TLS 1.0 and 1.1: only the server refuses
        with socket.create_connection(("127.0.0.1", tls_server.port), timeout=5) as raw, \
                ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            return str(tls.version())

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # naming TLS 1.0 and 1.1 warns, rightly
        assert handshake(ssl.TLSVersion.TLSv1_2) == "TLSv1.2"
        with pytest.raises(ssl.SSLError):
            handshake(ssl.TLSVersion.TLSv1_1)


# -- mutual TLS: the server checks the client --------------------------------------------------------


@pytest.mark.parametrize("transport", ["rest", "grpc"])
def test_mtls_a_client_certificate_signed_by_the_ca_predicts(mtls_server: TlsServer, pki: Pki,
                                                             transport: str) -> None:
    url = mtls_server.url if transport == "rest" else mtls_server.grpc_url
    with shipyard.Client(url, ca_file=pki.ca, cert=pki.client_cert, key=pki.client_key, timeout=30) as client:
        assert list(client.predict("demo", [ROW])[0]) == ["predict"]
    with shipyard.Client(url, ca_file=pki.ca, cert=pki.client_both, timeout=30) as client:  # key in the cert file
        assert client.metadata("demo")["name"] == "demo"


@pytest.mark.parametrize("transport", ["rest", "grpc"])
def test_mtls_a_client_without_a_certificate_is_refused(mtls_server: TlsServer, pki: Pki, transport: str) -> None:
    url = mtls_server.url if transport == "rest" else mtls_server.grpc_url
    message, _ = refused(url, ca_file=pki.ca, retries=1)
    assert "if the server requires client certificates (mutual TLS), pass cert=PATH and key=PATH" in message
    # the refusal is the handshake's: a bare TLS connection without a certificate gets no HTTP answer
    ctx = ssl.create_default_context(cafile=pki.ca)
    with socket.create_connection(("127.0.0.1", mtls_server.port), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        tls.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        try:
            answer = tls.recv(100)
        except (ssl.SSLError, ConnectionResetError):
            answer = b""
    assert answer == b""


@pytest.mark.parametrize("transport", ["rest", "grpc"])
def test_mtls_a_certificate_from_another_ca_is_refused(mtls_server: TlsServer, pki: Pki, transport: str) -> None:
    url = mtls_server.url if transport == "rest" else mtls_server.grpc_url
    message, _ = refused(url, ca_file=pki.ca, cert=pki.stranger_both, retries=1)
    assert "it may have refused this one: check its CA signed cert" in message


def test_optional_client_certificates(optional_server: TlsServer, pki: Pki) -> None:
    # REST: none is fine, one signed by the CA is fine, one from another CA is refused
    for cert, key in ((None, None), (pki.client_cert, pki.client_key)):
        with shipyard.Client(optional_server.url, ca_file=pki.ca, cert=cert, key=key) as client:
            assert list(client.predict("demo", [ROW])[0]) == ["predict"]
    message, _ = refused(optional_server.url, ca_file=pki.ca, cert=pki.stranger_both, retries=1)
    assert "it may have refused this one" in message
    # gRPC does not ask for one (grpcio: required or not asked)
    with shipyard.Client(optional_server.grpc_url, ca_file=pki.ca) as client:
        assert list(client.predict("demo", [ROW])[0]) == ["predict"]


# -- the token on gRPC, over TLS ------------------------------------------------------------------------


def test_token_goes_as_authorization_metadata_over_grpcs(pki: Pki) -> None:
    from shipyard.protocol.grpc import inference_pb2, inference_pb2_grpc

    seen: list[str | None] = []

    class Recorder(inference_pb2_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
        async def ServerLive(self, request: Any, context: Any) -> Any:  # noqa: N802 - the RPC's name
            seen.append(dict(context.invocation_metadata()).get("authorization"))
            return inference_pb2.ServerLiveResponse(live=True)

        async def ServerReady(self, request: Any, context: Any) -> Any:  # noqa: N802
            return inference_pb2.ServerReadyResponse(ready=True)

    async def go() -> dict[str, bool]:
        server = grpc.aio.server()
        inference_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(Recorder(), server)
        creds = grpc.ssl_server_credentials([(pki.server_key.read_bytes(), pki.server_cert.read_bytes())])
        port = server.add_secure_port("127.0.0.1:0", creds)
        await server.start()
        try:
            async with shipyard.AsyncClient(f"grpcs://127.0.0.1:{port}", ca_file=pki.ca, token="sk_abc") as client:
                return await client.health()
        finally:
            await server.stop(None)

    assert asyncio.run(go()) == {"live": True, "ready": True}
    assert seen == ["Bearer sk_abc"]


# -- configuration errors stop `shipyard serve` with the setting named -----------------------------------


def serve_fails(home: Path, env: dict[str, str]) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "shipyard", "serve", "demo@champion", "--host", "127.0.0.1", "--port",
         str(free_port())],
        env={**os.environ, "SHIPYARD_HOME": str(home), **env}, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode != 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def test_serve_with_a_missing_certificate_stops_with_the_setting_named(demo_home: Path, tmp_path: Path) -> None:
    missing = tmp_path / "server.pem"
    output = serve_fails(demo_home, {"SHIPYARD_SECURITY__TLS__CERTFILE": str(missing)})
    assert f"security.tls.certfile: {missing} does not exist" in output
    assert "Traceback" not in output


def test_serve_with_client_auth_but_no_ca_file_stops(demo_home: Path, pki: Pki) -> None:
    output = serve_fails(demo_home, {"SHIPYARD_SECURITY__TLS__CERTFILE": str(pki.server_cert),
                                     "SHIPYARD_SECURITY__TLS__KEYFILE": str(pki.server_key),
                                     "SHIPYARD_SECURITY__TLS__CLIENT_AUTH": "required"})
    assert "security.tls.client_auth needs security.tls.ca_file" in output
    assert "Traceback" not in output
