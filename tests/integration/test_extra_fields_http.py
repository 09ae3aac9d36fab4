"""Records with ids beside the features, as users send them: `shipyard register --extra-fields`, then a real
`shipyard serve` (REST /v1, asynchronous jobs, OIP /v2 and gRPC) with its `--extra-fields` override."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
import skops.io as sio
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

from shipyard.testing import run_server

pytestmark = pytest.mark.integration

HINT = "(set extra_fields to 'ignore' or 'passthrough' to accept other fields)"


def shipyard(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SHIPYARD_HOME": str(home)}
    proc = subprocess.run([sys.executable, "-m", "shipyard", *args], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    return proc


@pytest.fixture
def registered(tmp_path: Path) -> tuple[Path, LogisticRegression, list[dict[str, float]]]:
    """iris (registered with --extra-fields passthrough) and plain (the default) in a fresh home."""
    X, y = load_iris(return_X_y=True, as_frame=True)
    X.columns = ["sl", "sw", "pl", "pw"]
    model = LogisticRegression(max_iter=500).fit(X, y)
    sio.dump(model, tmp_path / "iris.skops")
    X.head(5).to_csv(tmp_path / "sample.csv", index=False)
    home = tmp_path / "home"
    common = [str(tmp_path / "iris.skops"), "--sample", str(tmp_path / "sample.csv")]
    shipyard(home, "register", "iris", *common, "--extra-fields", "passthrough")
    shipyard(home, "register", "plain", *common)
    shown = json.loads(shipyard(home, "models", "show", "iris", "--json").stdout)
    assert shown["signature"]["extra_fields"] == "passthrough"
    assert "extra_fields" not in json.loads(shipyard(home, "models", "show", "plain", "--json").stdout)["signature"]
    return home, model, X.iloc[::30].to_dict(orient="records")


def test_a_served_model_passes_ids_through_rest_and_jobs_and_oip_stays_strict(
    registered: tuple[Path, LogisticRegression, list[dict[str, float]]]
) -> None:
    home, model, rows = registered
    want = model.predict(pd.DataFrame(rows)).tolist()
    with_ids = [{"order_id": f"o-{i}", **r} for i, r in enumerate(rows)]
    with run_server(home, ["iris", "plain"], args=["--workers", "1"], grpc=True) as server, \
            httpx.Client(base_url=server.url, timeout=30) as c:
        r = c.post("/v1/models/iris:predict", json={"instances": with_ids})
        assert r.status_code == 200, r.text
        assert r.json()["predictions"] == want
        assert r.json()["passthrough"] == [{"order_id": f"o-{i}"} for i in range(len(rows))]

        refused = c.post("/v1/models/plain:predict", json={"instances": with_ids})
        assert refused.status_code == 400
        assert refused.json()["error"] == f"unexpected input 'order_id': this model takes 'sl', 'sw', 'pl', 'pw' {HINT}"

        job = c.post("/v1/models/iris/jobs", json={"instances": with_ids})
        assert job.status_code == 202, job.text
        deadline = time.monotonic() + 60
        while (view := c.get(job.json()["url"]).json())["status"] == "queued":
            assert time.monotonic() < deadline, server.log()[-3000:]
            time.sleep(0.05)
        assert view["status"] == "done", view
        assert view["result"]["predictions"] == want and view["result"]["passthrough"] == r.json()["passthrough"]

        columns = {k: [row[k] for row in rows] for k in rows[0]}
        v2 = {"inputs": [{"name": k, "datatype": "FP64", "shape": [len(v)], "data": v} for k, v in columns.items()]}
        v2["inputs"].append({"name": "order_id", "datatype": "FP64", "shape": [len(rows)], "data": [1.0] * len(rows)})
        strict = c.post("/v2/models/iris/infer", json=v2)
        assert strict.status_code == 400
        assert strict.json()["error"] == "unexpected input 'order_id': this model takes 'sl', 'sw', 'pl', 'pw'"

        import tritonclient.grpc as grpcclient
        from tritonclient.utils import InferenceServerException

        client = grpcclient.InferenceServerClient(server.grpc_target)
        inputs = []
        for name in [*columns, "order_id"]:
            values = np.array(columns.get(name, [1.0] * len(rows)), dtype=np.float64)
            tensor = grpcclient.InferInput(name, list(values.shape), "FP64")
            tensor.set_data_from_numpy(values)
            inputs.append(tensor)
        with pytest.raises(InferenceServerException, match="unexpected input 'order_id'") as info:
            client.infer("iris", inputs)
        assert "extra_fields" not in str(info.value)
        client.close()


def test_the_serve_flag_and_its_environment_variable_override_the_registered_policy(
    registered: tuple[Path, LogisticRegression, list[dict[str, float]]]
) -> None:
    home, _, rows = registered
    with_ids = {"instances": [{"order_id": i, **r} for i, r in enumerate(rows)]}
    with run_server(home, ["iris", "plain"], args=["--workers", "1", "--extra-fields", "plain=ignore",
                                                   "--async-broker", "off"],
                    env={"SHIPYARD_EXTRA_FIELDS": "refuse"}) as server:
        plain = httpx.post(f"{server.url}/v1/models/plain:predict", json=with_ids)
        assert plain.status_code == 200 and "passthrough" not in plain.json()
        # the flag replaces the variable: iris keeps its own passthrough
        iris = httpx.post(f"{server.url}/v1/models/iris:predict", json=with_ids)
        assert iris.status_code == 200 and iris.json()["passthrough"][0] == {"order_id": 0}
    with run_server(home, ["iris"], args=["--workers", "1", "--async-broker", "off"],
                    env={"SHIPYARD_EXTRA_FIELDS": "iris=refuse"}) as server:
        refused = httpx.post(f"{server.url}/v1/models/iris:predict", json=with_ids)
        assert refused.status_code == 400 and HINT in refused.json()["error"]


def test_a_bad_policy_is_refused_by_the_cli_with_the_nearest_value(tmp_path: Path) -> None:
    env = {**os.environ, "SHIPYARD_HOME": str(tmp_path / "home"), "SHIPYARD_EXTRA_FIELDS": "passthru"}
    proc = subprocess.run([sys.executable, "-m", "shipyard", "serve"], env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode != 0
    assert "extra_fields must be 'refuse', 'ignore' or 'passthrough', got 'passthru'; did you mean 'passthrough'?" \
        in proc.stderr + proc.stdout
