"""`shipyard serve -c shipyard.yaml` in a real process: the file's port, models and per-model batching."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from shipyard.demo import FEATURES
from shipyard.testing import free_port
from shipyard.testing._process import stop_process

pytestmark = pytest.mark.integration


def test_serve_takes_port_models_and_batching_from_the_file(demo_home: Path, tmp_path: Path) -> None:
    port = free_port()
    file = tmp_path / "shipyard.yaml"
    file.write_text(f"""
host: 127.0.0.1
port: {port}
workers: 1
async_broker: "off"
models:
  - ref: demo@champion
    batching: {{max_size: 8, max_wait_ms: 2}}
""")
    log = tmp_path / "serve.log"
    env = {**os.environ, "SHIPYARD_HOME": str(demo_home)}
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "shipyard", "serve", "-c", str(file)],
                                stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                if httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server not ready in 60 s:\n" + log.read_text()
            time.sleep(0.2)
        with httpx.Client(base_url=url) as c:
            config = c.get("/v2/models/demo/config").json()
            assert config["dynamic_batching"] == {"preferred_batch_size": [8], "max_queue_delay_microseconds": 2000}
            r = c.post("/v1/models/demo:predict", json={"instances": [dict.fromkeys(FEATURES, 1.0)]})
            assert r.status_code == 200, r.text
            assert r.json()["model_version"] == "1"
    finally:
        stop_process(proc, "shipyard serve", grace=10)


def test_serve_with_a_bad_file_exits_1_naming_the_key(tmp_path: Path) -> None:
    file = tmp_path / "shipyard.yaml"
    file.write_text("models:\n  - ref: demo\n    batching: {max_size: lots}\n")
    done = subprocess.run([sys.executable, "-m", "shipyard", "serve", "-c", str(file)],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "SHIPYARD_HOME": str(tmp_path / "home")})
    assert done.returncode == 1
    assert "models[0].batching.max_size: expected an integer or null, got 'lots'" in done.stderr
