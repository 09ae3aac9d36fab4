"""The CLI as a user runs it: real subprocesses, a throwaway SHIPYARD_HOME."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import joblib
import pytest
import skops.io as sio
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

from shipyard.testing import free_port, run_server

pytestmark = pytest.mark.integration


def shipyard(home: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SHIPYARD_HOME": str(home), "COLUMNS": "200"}
    proc = subprocess.run([sys.executable, "-m", "shipyard", *args], env=env, capture_output=True, text=True,
                          timeout=120)
    if check:
        assert proc.returncode == 0, proc.stderr + proc.stdout
    return proc


@pytest.fixture
def iris_files(tmp_path: Path) -> tuple[Path, Path, LogisticRegression]:
    X, y = load_iris(return_X_y=True, as_frame=True)
    X.columns = ["sl", "sw", "pl", "pw"]
    model = LogisticRegression(max_iter=500).fit(X, y)
    model_path = tmp_path / "iris.skops"
    sio.dump(model, model_path)
    sample = tmp_path / "sample.csv"
    X.head(5).to_csv(sample, index=False)
    return model_path, sample, model


def test_quickstart_registers_serves_and_prints_a_working_curl_line(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "SHIPYARD_HOME": str(tmp_path / "home")}
    proc = subprocess.Popen([sys.executable, "-m", "shipyard", "quickstart", "--port", str(port)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 90
        assert proc.stdout is not None
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.strip().startswith("curl"):
                break
        out = "".join(lines)
        assert "registered demo:1" in out, out
        assert re.search(r"prediction from demo:1: \[1\]", out), out
        curl = lines[-1].strip()
        body = re.search(r"-d '(.*)'$", curl).group(1)  # type: ignore[union-attr]
        r = httpx.post(f"http://127.0.0.1:{port}/v1/models/demo:predict", content=body,
                       headers={"Content-Type": "application/json"})
        assert r.status_code == 200 and r.json()["predictions"] == [1]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
        assert proc.stdout is not None
        proc.stdout.close()
    assert proc.returncode == 0  # SIGTERM drains and exits cleanly


def test_a_sigterm_to_the_whole_process_group_drains_without_a_worker_dying_first(tmp_path: Path) -> None:
    """systemd (KillMode=control-group), `timeout` and `kill -- -PGID` signal the model workers too: they
    leave shutdown to the server, which drains and exits 0 without a worker death or a traceback."""
    port = free_port()
    env = {**os.environ, "SHIPYARD_HOME": str(tmp_path / "home")}
    log = tmp_path / "serve.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "shipyard", "quickstart", "--port", str(port)],
                                env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while "curl" not in log.read_text() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
        assert "curl" in log.read_text(), log.read_text()
        os.killpg(proc.pid, signal.SIGTERM)  # the server, its model workers and the forkserver at once
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    text = log.read_text()
    assert proc.returncode == 0, text
    assert "died" not in text and "Traceback" not in text, text


def test_register_show_alias_rollback_predict(tmp_path: Path, iris_files) -> None:
    home = tmp_path / "home"
    model_path, sample, model = iris_files
    out = shipyard(home, "register", "iris", str(model_path), "--sample", str(sample), "--tag", "team=risk",
                   "--metric", "accuracy=0.97", "--alias", "champion").stdout
    assert "registered iris:1" in out
    # the same file again: a different parent does not make it a different model
    again = shipyard(home, "register", "iris", str(model_path), "--sample", str(sample), "--parent", "iris:1",
                     check=False)
    assert again.returncode == 1 and "identical to iris:1" in again.stderr and "--if-identical" in again.stderr
    shipyard(home, "register", "iris", str(model_path), "--sample", str(sample), "--parent", "iris:1",
             "--if-identical", "new")
    listing = shipyard(home, "models").stdout
    assert "iris" in listing and "champion→1" in listing
    shown = json.loads(shipyard(home, "models", "show", "iris:2", "--json").stdout)
    assert shown["lineage"]["parent"] == "iris:1"
    assert [i["name"] for i in shown["signature"]["inputs"]] == ["sl", "sw", "pl", "pw"]
    table = shipyard(home, "models", "show", "iris@champion").stdout
    assert "sl" in table and "FP64" in table and "team=risk" in table
    assert "2" in shipyard(home, "models", "versions", "iris").stdout
    assert "-> version 2" in shipyard(home, "alias", "iris", "champion", "2").stdout
    assert "version 2 -> 1" in shipyard(home, "rollback", "iris").stdout
    history = shipyard(home, "alias", "iris").stdout
    assert "rollback" in history and "set" in history
    pred = json.loads(shipyard(home, "predict", "iris@champion", "--input", str(sample)).stdout)
    X = load_iris(as_frame=True).data.head(5)
    assert pred["model_version"] == "1"
    assert pred["predictions"] == model.predict(X.set_axis(["sl", "sw", "pl", "pw"], axis=1)).tolist()
    with run_server(home, ["iris@champion"]) as server:
        remote = json.loads(shipyard(home, "predict", "iris", "--url", server.url, "--data",
                                     '[{"sl": 5.1, "sw": 3.5, "pl": 1.4, "pw": 0.2}]').stdout)
        assert remote["predictions"] == [0]


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (["models", "show", "nope"], "model 'nope' is not registered"),
        (["predict", "nope", "--data", "[]"], "not registered"),
        (["rollback", "nope"], "not registered"),
        (["register", "bad name!", "README.md"], "invalid model name"),
        (["models", "show", "x:zero"], "invalid version"),
    ],
)
def test_failures_exit_non_zero_with_one_line_reason(tmp_path: Path, args: list[str], reason: str) -> None:
    proc = shipyard(tmp_path / "home", *args, check=False)
    assert proc.returncode != 0
    assert reason in proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) <= 2


def test_pickle_is_refused_without_trust_and_accepted_with_it(tmp_path: Path, iris_files) -> None:
    _, sample, model = iris_files
    pkl = tmp_path / "model.joblib"
    joblib.dump(model, pkl)
    refused = shipyard(tmp_path / "home", "register", "p", str(pkl), "--sample", str(sample), check=False)
    assert refused.returncode == 1
    assert "--trust-pickle" in refused.stderr and "arbitrary code" in refused.stderr
    ok = shipyard(tmp_path / "home", "register", "p", str(pkl), "--sample", str(sample), "--trust-pickle")
    assert "registered p:1" in ok.stdout
    shown = json.loads(shipyard(tmp_path / "home", "models", "show", "p", "--json").stdout)
    assert "model.skops" in shown["files"]  # converted to the safe format on the way in


def test_help_reads_well() -> None:
    top = subprocess.run([sys.executable, "-m", "shipyard", "--help"], capture_output=True, text=True).stdout
    for cmd in ("quickstart", "register", "models", "alias", "rollback", "serve", "predict"):
        assert cmd in top
    serve_help = subprocess.run([sys.executable, "-m", "shipyard", "serve", "--help"], capture_output=True,
                                text=True).stdout
    assert "--port" in serve_help and "name@alias" in serve_help
