"""`shipyard serve --runtime onnx`: compiled once, checked, cached, and equal to the native model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import pytest
from tests.fixtures.custom import register_source_model

from shipyard.demo import FEATURES, train_demo_model
from shipyard.testing import run_server

pytestmark = pytest.mark.integration


def _maps_sklearn(pid: int) -> bool:
    """Whether the process has loaded any of scikit-learn's compiled extension modules."""
    return "/sklearn/" in Path(f"/proc/{pid}/maps").read_text()


def test_the_onnx_path_is_checked_cached_and_answers_like_the_native_model(
    demo_home: Path, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    shutil.copytree(demo_home, home)
    model, X, _ = train_demo_model()
    rows = X.iloc[::3]
    body = {"instances": rows.to_dict(orient="records")}
    with run_server(home, ["demo"], args=["--runtime", "onnx", "--workers", "1"]) as first:
        r = httpx.post(f"{first.url}/v1/models/demo:predict", json=body, timeout=30)
        log = first.log()
    assert r.status_code == 200
    assert r.json()["predictions"] == model.predict(rows).tolist()
    assert "through ONNX Runtime (checked on 150 rows)" in log  # the demo's check set: all of iris
    (verdict_file,) = (home / "cache" / "compiled" / "demo").glob("*/verdict.json")
    verdict = json.loads(verdict_file.read_text())
    assert verdict["ok"] is True and len(verdict["sha256"]) == 64

    # A second start loads the cached graph: scikit-learn is never even imported.
    with run_server(home, ["demo"], args=["--runtime", "onnx", "--workers", "1"]) as second:
        r2 = httpx.post(f"{second.url}/v1/models/demo:predict", json=body, timeout=30)
        assert not _maps_sklearn(second.process.pid)
        assert "checked on" not in second.log()
    assert r2.json()["predictions"] == r.json()["predictions"]


def test_a_model_that_cannot_compile_is_served_natively_with_the_reason_logged(tmp_path: Path) -> None:
    home = tmp_path / "home"
    register_source_model(tmp_path, home, module="plain_model", cls="Plain", name="plain", sample={"x": [1.0]},
                          source="import shipyard\n\nclass Plain(shipyard.Model):\n"
                                 "    def predict(self, inputs):\n        return inputs['x'] + 1\n")
    with run_server(home, ["plain"], args=["--runtime", "onnx", "--workers", "1"]) as server:
        r = httpx.post(f"{server.url}/v1/models/plain:predict", json={"instances": [{"x": 41.0}]}, timeout=30)
        log = server.log()
    assert r.json()["predictions"] == [42.0]
    assert "serving plain:1 natively" in log and "nothing to convert" in log


def test_auto_leaves_formats_without_a_known_gain_alone(demo_home: Path) -> None:
    with run_server(demo_home, ["demo"], args=["--runtime", "auto", "--workers", "1"]) as server:
        r = httpx.post(f"{server.url}/v1/models/demo:predict",
                       json={"instances": [dict.fromkeys(FEATURES, 1.0)]}, timeout=30)
        assert r.status_code == 200
        assert "ONNX Runtime" in server.log()  # sklearn is one of the formats auto compiles
