"""REST routes of Triton's extensions in-process: model config, statistics (counted for every
transport in one place), repository index."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression

from shipyard.config import Settings
from shipyard.protocol.grpc import codec
from shipyard.registry import Registry
from shipyard.serving.grpc.service import InferenceServicer
from shipyard.serving.server import Server, build_server, started
from shipyard.types import InferenceRequest, Tensor

pytestmark = pytest.mark.anyio

X = pd.DataFrame({"x1": [0.0, 1.0, 2.0, 3.0, 4.0, 5.0], "x2": [5.0, 4.0, 0.0, 1.0, 3.0, 2.0]})
Y = (X["x1"] > X["x2"]).astype(int)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Settings, Registry]]:
    settings = Settings(home=tmp_path_factory.mktemp("ext") / "home", workers=1, alias_refresh_seconds=0)
    registry = Registry.from_settings(settings)
    try:
        registry.register(LogisticRegression().fit(X, Y), "m", sample=X.head(3), alias="champion")
        registry.register(LogisticRegression(C=0.5).fit(X, Y), "m", sample=X.head(3))
        yield settings, registry
    finally:
        registry.close()


@pytest.fixture
async def served(shared: tuple[Settings, Registry]) -> AsyncIterator[tuple[Server, httpx.AsyncClient]]:
    settings, registry = shared
    server = build_server(settings, ["m@champion"], registry=registry)
    transport = httpx.ASGITransport(app=server.app)
    async with started(server), httpx.AsyncClient(transport=transport, base_url="http://shipyard.test") as c:
        yield server, c


def v2_body(rows: pd.DataFrame) -> dict[str, object]:
    return {"inputs": [{"name": c, "datatype": "FP64", "shape": [len(rows)], "data": rows[c].tolist()}
                       for c in rows.columns]}


async def test_config_of_the_served_version_and_of_a_named_one(served: tuple[Server, httpx.AsyncClient]) -> None:
    _, c = served
    config = (await c.get("/v2/models/m/config")).json()
    assert config["name"] == "m" and config["version_policy"] == {"specific": {"versions": [1]}}
    assert config["input"][0] == {"name": "x1", "data_type": "TYPE_FP64", "dims": [1], "reshape": {"shape": []}}
    assert (await c.get("/v2/models/m/versions/2/config")).json()["version_policy"]["specific"]["versions"] == [2]
    r = await c.get("/v2/models/m/versions/7/config")
    assert r.status_code == 404 and "has no version 7" in r.json()["error"]


async def test_every_transport_is_counted_in_the_same_statistics(served: tuple[Server, httpx.AsyncClient]) -> None:
    server, c = served
    assert (await c.post("/v2/models/m/infer", json=v2_body(X))).status_code == 200
    assert (await c.post("/v1/models/m:predict", json={"instances": X.head(2).to_dict(orient="records")})
            ).status_code == 200
    gql = await c.post("/graphql", json={"query": '{ predict(model: "m", records: [{x1: 1, x2: 2}]) { predictions } }'})
    assert "errors" not in gql.json(), gql.text
    msg = codec.encode_request(InferenceRequest([Tensor(k, X[k].to_numpy()) for k in X.columns]), "m")
    await InferenceServicer(server.dataplane).ModelInfer(msg, _Context())
    assert (await c.post("/v2/models/m/infer", json=v2_body(X[["x1"]]))).status_code == 400  # a failure

    everything = (await c.get("/v2/models/stats")).json()["model_stats"]
    assert [(s["name"], s["version"]) for s in everything] == [("m", "1")]
    (stats,) = everything
    assert stats["inference_count"] == len(X) + 2 + 1 + len(X)
    assert stats["inference_stats"]["success"]["count"] == 4 and stats["inference_stats"]["fail"]["count"] == 1
    assert (await c.get("/v2/models/m/stats")).json()["model_stats"] == everything
    assert (await c.get("/v2/models/m/versions/1/stats")).json()["model_stats"] == everything
    unused = (await c.get("/v2/models/m/versions/2/stats")).json()["model_stats"]  # exists, never loaded
    assert unused[0]["version"] == "2" and unused[0]["inference_count"] == 0
    r = await c.get("/v2/models/m/versions/7/stats")
    assert r.status_code == 404 and "has no version 7" in r.json()["error"]


async def test_repository_index_with_an_empty_body_or_ready_only(served: tuple[Server, httpx.AsyncClient]) -> None:
    _, c = served
    everything = (await c.post("/v2/repository/index", content=b"")).json()
    assert [(m["name"], m["version"], m["state"]) for m in everything] == [("m", "1", "READY"),
                                                                          ("m", "2", "UNAVAILABLE")]
    ready = (await c.post("/v2/repository/index", json={"ready": True})).json()
    assert [(m["name"], m["version"]) for m in ready] == [("m", "1")]
    r = await c.post("/v2/repository/index", json={"ready": "yes"})
    assert r.status_code == 400 and r.json() == {"error": "'ready' must be true or false, got 'yes'", "field": "ready",
                                                 "kind": "invalid_input", "type": "InvalidInput"}
    r = await c.post("/v2/repository/index", json=[1])
    assert r.status_code == 400 and r.json()["field"] == "body"
    # a body of whitespace is not an absent body: it is not JSON (the fuzzer's finding)
    r = await c.post("/v2/repository/index", content=b"\n", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["field"] == "body"


async def test_server_metadata_names_the_extensions(served: tuple[Server, httpx.AsyncClient]) -> None:
    _, c = served
    assert {"model_configuration", "statistics"} <= set((await c.get("/v2")).json()["extensions"])


class _Context:
    def invocation_metadata(self) -> tuple[()]:
        return ()

    def set_trailing_metadata(self, md: object) -> None:
        pass

    async def abort(self, code: object, details: str, trailing_metadata: object = ()) -> None:
        raise AssertionError(details)
