"""Clients of `mlflow models serve` against a real `shipyard serve`: MLflow's own scoring client and raw
requests in each of MLflow's formats, on /invocations and /v1/models/NAME/invocations."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import numpy as np
import orjson
import pandas as pd
import pytest

from shipyard import __version__
from shipyard.config import Settings
from shipyard.demo import train_demo_model
from shipyard.registry import Registry
from shipyard.testing import RunningServer, run_server

pytestmark = pytest.mark.integration

scoring_client = pytest.importorskip("mlflow.pyfunc.scoring_server.client", reason="extra 'mlflow' (mlflow-skinny)")


@pytest.fixture(scope="module")
def rows() -> pd.DataFrame:
    _, X, _ = train_demo_model()
    return X.sample(12, random_state=0).reset_index(drop=True)


def expected(server: RunningServer, rows: pd.DataFrame, model: str = "demo") -> list[int]:
    r = httpx.post(f"{server.url}/v1/models/{model}:predict", json={"instances": rows.to_dict(orient="records")})
    assert r.status_code == 200, r.text
    return r.json()["predictions"]  # type: ignore[no-any-return]


def test_mlflows_own_scoring_client_works_unchanged(demo_server: RunningServer, rows: pd.DataFrame) -> None:
    client = scoring_client.ScoringServerClient("127.0.0.1", demo_server.port)
    client.wait_server_ready(timeout=30)  # polls /ping
    assert client.get_version() == __version__
    got = client.invoke(rows).get_predictions()  # {"dataframe_split": ...} -> {"predictions": ...}
    assert got.iloc[:, 0].tolist() == expected(demo_server, rows)
    as_array = client.invoke(rows.to_numpy()).get_predictions()  # {"inputs": [[...], ...]}
    assert as_array.iloc[:, 0].tolist() == expected(demo_server, rows)
    as_columns = client.invoke({c: rows[c].to_numpy() for c in rows}).get_predictions()  # {"inputs": {...}}
    assert as_columns.iloc[:, 0].tolist() == expected(demo_server, rows)


@pytest.mark.parametrize("fmt", ["dataframe_split", "dataframe_records", "instances", "inputs-columns",
                                 "inputs-rows", "csv"])
def test_every_mlflow_request_format(demo_server: RunningServer, rows: pd.DataFrame, fmt: str) -> None:
    headers = {"Content-Type": "application/json"}
    if fmt == "dataframe_split":
        content = orjson.dumps({"dataframe_split": rows.to_dict(orient="split")})
    elif fmt == "dataframe_records":
        content = orjson.dumps({"dataframe_records": rows.to_dict(orient="records")})
    elif fmt == "instances":
        content = orjson.dumps({"instances": rows.to_dict(orient="records")})
    elif fmt == "inputs-columns":
        content = orjson.dumps({"inputs": rows.to_dict(orient="list")})
    elif fmt == "inputs-rows":
        content = orjson.dumps({"inputs": rows.to_numpy().tolist()})
    else:
        content, headers = rows.to_csv(index=False), {"Content-Type": "text/csv"}
    for path in ("/invocations", "/v1/models/demo/invocations"):
        r = httpx.post(f"{demo_server.url}{path}", content=content, headers=headers)
        assert r.status_code == 200, (path, r.text)
        assert r.headers["content-type"] == "application/json"
        assert r.json() == {"predictions": expected(demo_server, rows)}, path


def test_mlflow_refusals_are_shipyards(demo_server: RunningServer, rows: pd.DataFrame) -> None:
    url = f"{demo_server.url}/invocations"
    records = rows.head(2).to_dict(orient="records")
    r = httpx.post(url, json={"dataframe_records": records, "params": {"temperature": 0.5}})
    assert r.status_code == 400 and r.json()["field"] == "params"
    r = httpx.post(url, json={"dataframe_records": records, "instances": records})
    assert r.status_code == 400 and "exactly one of dataframe_split" in r.json()["error"]
    r = httpx.post(url, content=b"<xml/>", headers={"Content-Type": "application/xml"})
    assert r.status_code == 415 and "application/json or text/csv" in r.json()["error"]
    r = httpx.post(url, content=b"{}", headers={"Content-Type": "application/json; charset=latin-1"})
    assert r.status_code == 415 and "UTF-8" in r.json()["error"]
    bad = rows.head(2).copy()
    bad["petal_width"] = ["wide", "x"]
    r = httpx.post(url, content=bad.to_csv(index=False), headers={"Content-Type": "text/csv"})
    assert r.status_code == 400 and r.json()["field"] == "petal_width"
    assert httpx.get(f"{demo_server.url}/health").json() == {"ready": True}


@pytest.fixture(scope="module")
def two_models(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    home = tmp_path_factory.mktemp("two") / "home"
    model, X, _ = train_demo_model()
    reg = Registry.from_settings(Settings(home=home))
    try:
        reg.register(model, "iris", sample=X.head(5))
        reg.register(model, "flowers", sample=X.head(5))
    finally:
        reg.close()
    with run_server(home, ["iris", "flowers"], args=["--workers", "1"]) as server:
        yield server


def test_invocations_on_a_server_of_several_models_names_the_route_to_use(
    two_models: RunningServer, rows: pd.DataFrame
) -> None:
    body = {"dataframe_split": rows.to_dict(orient="split")}
    r = httpx.post(f"{two_models.url}/invocations", content=orjson.dumps(body),
                   headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["field"] == "model"
    assert "serves 2 (flowers, iris)" in r.json()["error"] and "/v1/models/NAME/invocations" in r.json()["error"]
    r = httpx.post(f"{two_models.url}/v1/models/iris/invocations", content=orjson.dumps(body),
                   headers={"Content-Type": "application/json"})
    assert r.status_code == 200
    assert np.array_equal(r.json()["predictions"], expected(two_models, rows, "iris"))
