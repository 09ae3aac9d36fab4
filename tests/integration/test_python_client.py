"""shipyard.Client over real sockets, REST and gRPC, against one `shipyard serve --grpc-port` process;
GraphQL over real HTTP on the same server; and a gRPC port that cannot be bound."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest

import shipyard
from shipyard import errors
from shipyard.demo import FEATURES, train_demo_model
from shipyard.testing import RunningServer, free_port

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def reference() -> tuple[Any, pd.DataFrame]:
    model, X, _ = train_demo_model()
    return model, X.iloc[::7]


@pytest.fixture(scope="module", params=["http", "grpc"])
def client(request: pytest.FixtureRequest, grpc_demo_server: RunningServer) -> Iterator[shipyard.Client]:
    url = grpc_demo_server.url if request.param == "http" else f"grpc://{grpc_demo_server.grpc_target}"
    with shipyard.Client(url, timeout=30) as c:
        yield c


def test_health_and_metadata(client: shipyard.Client) -> None:
    assert client.health() == {"live": True, "ready": True}
    assert client.metadata()["name"] == "shipyard"
    meta = client.metadata("demo@champion")
    assert [i["name"] for i in meta["inputs"]] == FEATURES and meta["versions"] == ["1"]
    assert meta["outputs"] == [{"name": "predict", "datatype": "INT64", "shape": [-1]}]


def test_predict_records_dataframe_and_arrays(client: shipyard.Client, reference: tuple[Any, pd.DataFrame]) -> None:
    model, rows = reference
    expected = model.predict(rows).tolist()
    records = client.predict("demo", rows.to_dict(orient="records"))
    assert [r["predict"] for r in records] == expected
    frame = client.predict("demo@champion", rows)
    assert isinstance(frame, pd.DataFrame) and frame.index.equals(rows.index)
    assert frame["predict"].tolist() == expected
    columns = client.predict("demo", {f: rows[f].to_numpy() for f in FEATURES}, version=1)
    assert isinstance(columns["predict"], np.ndarray) and columns["predict"].tolist() == expected
    response = client.infer("demo:1", {f: rows[f].to_numpy() for f in FEATURES}, request_id="c-1")
    assert (response.id, response.model_name, response.model_version) == ("c-1", "demo", "1")


def test_errors_are_shipyard_exceptions(client: shipyard.Client, reference: tuple[Any, pd.DataFrame]) -> None:
    _, rows = reference
    with pytest.raises(errors.InvalidInput, match="missing input 'petal_width'") as info:
        client.predict("demo", rows.drop(columns=["petal_width"]))
    assert info.value.field == "petal_width"
    with pytest.raises(errors.InvalidInput, match="input 'sepal_width': expected FP64") as info:
        client.predict("demo", rows.assign(sepal_width="wide"))
    assert info.value.field == "sepal_width" and type(info.value) is errors.InvalidInput
    with pytest.raises(errors.ModelNotServed, match="model 'nope' is not served here") as served:
        client.predict("nope", rows)
    with pytest.raises(errors.ModelNotFound, match="model 'demo' has no version 9") as missing:
        client.metadata("demo", version=9)
    # the server's own class, from the type it sent (REST body / gRPC metadata), never from the message
    assert (type(served.value), type(missing.value)) == (errors.ModelNotServed, errors.ModelNotFound)
    assert served.value.kind == missing.value.kind == "not_found"


@pytest.mark.parametrize("scheme", ["http", "grpc"])
def test_an_unreachable_server_is_retried_then_reported(scheme: str) -> None:
    url = f"{scheme}://127.0.0.1:{free_port()}"
    with shipyard.Client(url, retries=2, backoff=0.01, timeout=10) as client:
        assert client.health() == {"live": False, "ready": False}
        with pytest.raises(errors.ShipyardError, match=f"cannot reach {url}"):
            client.predict("demo", [dict.fromkeys(FEATURES, 1.0)])


def test_async_client_runs_many_requests_at_once(grpc_demo_server: RunningServer) -> None:
    async def main(url: str) -> list[Any]:
        async with shipyard.AsyncClient(url) as client:
            rows = [dict.fromkeys(FEATURES, float(i % 7)) for i in range(20)]
            return await asyncio.gather(*(client.predict("demo", [r]) for r in rows))

    for url in (grpc_demo_server.url, f"grpc://{grpc_demo_server.grpc_target}"):
        answers = asyncio.run(main(url))
        assert len(answers) == 20 and all(len(a) == 1 and "predict" in a[0] for a in answers)


def test_graphql_over_http(grpc_demo_server: RunningServer, reference: tuple[Any, pd.DataFrame]) -> None:
    model, rows = reference
    query = """query($records: JSON!) {
      models { name ref versions { version signature { inputs { name datatype } } } aliases { name version } }
      predict(model: "demo", records: $records) { modelName modelVersion requestId predictions }
    }"""
    r = httpx.post(f"{grpc_demo_server.url}/graphql", json={"query": query,
                   "variables": {"records": rows.to_dict(orient="records")}}, headers={"X-Request-ID": "gql-http"})
    assert r.status_code == 200 and r.headers["x-request-id"] == "gql-http"
    data = r.json()["data"]
    (m,) = data["models"]
    assert (m["name"], m["ref"], m["aliases"]) == ("demo", "demo@champion", [{"name": "champion", "version": 1}])
    assert [i["name"] for i in m["versions"][0]["signature"]["inputs"]] == FEATURES
    assert data["predict"] == {"modelName": "demo", "modelVersion": "1", "requestId": "gql-http",
                               "predictions": model.predict(rows).tolist()}
    bad = httpx.post(f"{grpc_demo_server.url}/graphql", json={
        "query": '{ predict(model: "demo", records: [{sepal_length: 1}]) { predictions } }'}).json()
    (error,) = bad["errors"]
    assert "missing input 'sepal_width'" in error["message"]
    assert error["extensions"] == {"code": "BAD_USER_INPUT", "status": 400, "kind": "invalid_input",
                                   "type": "InvalidInput", "field": "sepal_width"}


@pytest.mark.slow
def test_serve_fails_with_one_line_when_the_grpc_port_is_taken(demo_home: Path, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "shipyard", "serve", "demo", "--port", str(free_port()), "--grpc-port", str(port)],
            env={**__import__("os").environ, "SHIPYARD_HOME": str(demo_home)},
            capture_output=True, text=True, timeout=120,
        )
    assert result.returncode != 0
    assert f"cannot listen for gRPC on 127.0.0.1:{port}" in result.stderr
