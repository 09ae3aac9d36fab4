"""``shipyard ui``: the dashboard of a registry with no model server, read-only, loading no model."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression

from shipyard.config import Settings
from shipyard.registry import Registry
from shipyard.testing import free_port
from shipyard.testing._process import stop_process

pytestmark = [pytest.mark.integration]


def test_ui_shows_a_registry_read_only_without_loading_models(tmp_path: Path) -> None:
    home = tmp_path / "home"
    x = pd.DataFrame({"a": [0.0, 1.0, 2.0, 3.0], "b": [1.0, 0.0, 1.0, 0.0]})
    reg = Registry.from_settings(Settings(home=home))
    try:
        reg.register(LogisticRegression().fit(x, [0, 1, 0, 1]), "fraud", sample=x, alias="champion")
        reg.register(LogisticRegression(C=2).fit(x, [0, 1, 0, 1]), "fraud", sample=x, alias="champion")
    finally:
        reg.close()
    port = free_port()
    log = tmp_path / "ui.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "shipyard", "ui", "--port", str(port)], stdout=out,
                                stderr=subprocess.STDOUT, env={**os.environ, "SHIPYARD_HOME": str(home)})
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        with httpx.Client(base_url=url, timeout=10) as http:
            while True:
                assert proc.poll() is None, log.read_text()
                try:
                    if http.get("/v2/health/ready").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
            overview = http.get("/v1/overview").json()
            assert [(m["name"], m["version"], m["aliases"]) for m in overview["models"]] == [
                ("fraud", 2, {"champion": 2})]
            assert overview["prediction_log"] is None  # off: the page says so rather than show zeros
            page = http.get("/ui/models/fraud")
            assert page.status_code == 200 and "Roll back" not in page.text and "data-confirm" not in page.text
            assert "v2" in page.text and "prediction log is off" in page.text
        assert "loaded fraud" not in log.read_text()  # no model was loaded
    finally:
        stop_process(proc, "shipyard ui", grace=10)
