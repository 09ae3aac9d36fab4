"""A graph step placed on a second `shipyard serve` process with authentication and TLS, called over gRPC:
answers with the credential its placement names, is refused without it, 503 when that server dies, recovers."""

from __future__ import annotations

import contextlib
import os
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trustme
from tests.fixtures.graph_steps import GraphModels, build_pipeline, data
from tests.integration.test_graphs import v2_body, v2_output

import shipyard
from shipyard.config import Settings
from shipyard.graphs import Node
from shipyard.registry import Registry
from shipyard.security.keys import KeyStore
from shipyard.testing import ServerFailed, free_port, run_server
from shipyard.testing.server import stop_process

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@contextlib.contextmanager
def serve_tls(home: Path, model: str, grpc_port: int, env: dict[str, str], ca: Path) -> Iterator[int]:
    """`shipyard serve MODEL` with TLS (REST and gRPC) and the given settings; yields its REST port once ready."""
    port = free_port()
    log_path = home.parent / f"shipyard-heavy-{port}.log"
    cmd = [sys.executable, "-m", "shipyard", "serve", model, "--host", "127.0.0.1", "--port", str(port),
           "--grpc-port", str(grpc_port), "--workers", "1", "--graceful-shutdown", "1"]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, "SHIPYARD_HOME": str(home), **env})
    trust = ssl.create_default_context(cafile=ca)
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise ServerFailed(f"shipyard serve did not get ready:\n{log_path.read_text(errors='replace')}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"https://127.0.0.1:{port}/v2/health/ready", verify=trust, timeout=1).status_code == 200:
                    break
            time.sleep(0.05)
        yield port
    finally:
        stop_process(proc, "shipyard serve", grace=10)


def test_a_step_on_another_server_sends_its_credential_is_named_when_that_server_dies_and_recovers(
        tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "server.pem"))
    home = tmp_path / "home"
    reg = Registry.from_settings(Settings(home=home))
    grpc_port = free_port()
    url = f"grpcs://127.0.0.1:{grpc_port}"
    try:
        models = GraphModels(home, build_pipeline(reg), [])
        _, token = KeyStore(reg.database).create("front", ["predict", "read"])
        for name, credential in (("split", {}), ("keyed", {"token_env": "MODELS_B_TOKEN"})):
            mv = reg.register(shipyard.Graph([
                Node("scale", "scaler:1"),
                Node("model", "lr:1", placement={"url": url, "ca_file": str(tmp_path / "ca.pem"), **credential}),
                Node("cut", "cut:1")]), name)
            assert mv.lineage["steps"]["model"] == "lr:1"
    finally:
        reg.close()
    stored = [f.read_bytes() for f in home.rglob("*") if f.is_file()]
    assert any(b"MODELS_B_TOKEN" in b for b in stored) and not any(token.encode() in b for b in stored)
    X = data(300, seed=3)[0]
    expected = models.by_hand(X).tolist()
    heavy_env = {"SHIPYARD_SECURITY__AUTH__ENABLED": "true",
                 "SHIPYARD_SECURITY__TLS__CERTFILE": str(tmp_path / "server.pem")}
    front_env = {"SHIPYARD_SECURITY__MODEL_URL_HOSTS": "127.0.0.1", "MODELS_B_TOKEN": token}
    with run_server(home, ["split", "keyed"], env=front_env) as front:
        def infer(graph: str) -> httpx.Response:
            return httpx.post(f"{front.url}/v2/models/{graph}/infer", json=v2_body(X), timeout=60)

        with serve_tls(home, "lr:1", grpc_port, heavy_env, tmp_path / "ca.pem") as heavy_port:
            refused = infer("split")
            assert refused.status_code == 503, refused.text
            assert refused.json()["error"].startswith(
                f"step 'model' (lr:1 at {url}) is unavailable: that server refused this server's credentials "
                "(Unauthenticated: no credentials")
            assert v2_output(infer("keyed"), "label") == expected
            trust = ssl.create_default_context(cafile=tmp_path / "ca.pem")
            stats = httpx.get(f"https://127.0.0.1:{heavy_port}/v2/models/stats", verify=trust,
                              headers={"Authorization": f"Bearer {token}"}, timeout=10).json()["model_stats"]
            assert [s["inference_count"] for s in stats if s["name"] == "lr"] == [len(X)]  # it ran over there

        gone = infer("keyed")
        assert gone.status_code == 503, gone.text
        assert f"step 'model' (lr:1 at {url}) is unavailable" in gone.json()["error"]

        with serve_tls(home, "lr:1", grpc_port, heavy_env, tmp_path / "ca.pem"):
            deadline = time.monotonic() + 60
            while (back := infer("keyed")).status_code != 200:
                assert back.status_code == 503 and time.monotonic() < deadline, back.text
                time.sleep(0.2)
            assert v2_output(back, "label") == expected
