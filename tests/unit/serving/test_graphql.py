"""GraphQL at /graphql in-process (httpx.ASGITransport): models, versions, aliases, signatures, predict, errors."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression

from shipyard import errors
from shipyard.config import Settings
from shipyard.registry import Registry
from shipyard.serving.graphql.errors import code_for, extensions_for
from shipyard.serving.server import build_server, started

pytestmark = pytest.mark.anyio

X = pd.DataFrame({"x1": [0.0, 1.0, 2.0, 3.0, 4.0, 5.0], "x2": [5.0, 4.0, 0.0, 1.0, 3.0, 2.0]})
Y = (X["x1"] > X["x2"]).astype(int)

PREDICT = """
query Predict($model: String!, $records: JSON!, $version: String) {
  predict(model: $model, records: $records, version: $version) {
    modelName modelVersion requestId predictions outputs { name datatype shape data }
  }
}"""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Settings, Registry, dict[int, Any]]]:
    """m:1 (alias champion) and m:2 predict opposite classes; 'other' is registered but not served."""
    settings = Settings(home=tmp_path_factory.mktemp("graphql") / "home", workers=1, alias_refresh_seconds=0)
    registry = Registry.from_settings(settings)
    try:
        first, second = LogisticRegression().fit(X, Y), LogisticRegression().fit(X, 1 - Y)
        registry.register(first, "m", sample=X.head(3), alias="champion", tags={"team": "a"})
        registry.register(second, "m", sample=X.head(3), metrics={"accuracy": 0.5})
        registry.register(first, "other", sample=X.head(3))
        yield settings, registry, {1: first, 2: second}
    finally:
        registry.close()


@pytest.fixture
async def client(shared: tuple[Settings, Registry, dict[int, Any]]) -> AsyncIterator[httpx.AsyncClient]:
    settings, registry, _ = shared
    server = build_server(settings, ["m@champion"], registry=registry)
    transport = httpx.ASGITransport(app=server.app)
    async with started(server), httpx.AsyncClient(transport=transport, base_url="http://shipyard.test") as c:
        yield c


async def gql(client: httpx.AsyncClient, query: str, headers: dict[str, str] | None = None,
              **variables: Any) -> dict[str, Any]:
    r = await client.post("/graphql", json={"query": query, "variables": variables}, headers=headers)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def test_models_with_versions_aliases_and_signatures(client: httpx.AsyncClient) -> None:
    body = await gql(client, """{ models { name ref loaded
        versions { version flavor digest tags metrics signature { format inputs { name datatype shape allowNan } } }
        aliases { name version } current { version } signature { outputs { name datatype shape } } } }""")
    assert "errors" not in body
    (m,) = body["data"]["models"]
    assert (m["name"], m["ref"], m["loaded"]) == ("m", "m@champion", True)
    assert [v["version"] for v in m["versions"]] == [1, 2]
    assert m["versions"][0]["tags"] == {"team": "a"} and m["versions"][1]["metrics"] == {"accuracy": 0.5}
    assert len(m["versions"][0]["digest"]) == 64
    assert m["versions"][0]["signature"] == {"format": "columns", "inputs": [
        {"name": "x1", "datatype": "FP64", "shape": [-1], "allowNan": False},
        {"name": "x2", "datatype": "FP64", "shape": [-1], "allowNan": False},
    ]}
    assert m["aliases"] == [{"name": "champion", "version": 1}]
    assert m["current"] == {"version": 1}
    assert m["signature"]["outputs"] == [{"name": "predict", "datatype": "INT64", "shape": [-1]}]


async def test_predict_returns_predictions_version_and_request_id(
    client: httpx.AsyncClient, shared: tuple[Settings, Registry, dict[int, Any]]
) -> None:
    models = shared[2]
    records = X.to_dict(orient="records")
    body = await gql(client, PREDICT, {"X-Request-ID": "gq-1"}, model="m", records=records)
    p = body["data"]["predict"]
    assert p["predictions"] == models[1].predict(X).tolist()  # the bare name means m@champion here
    assert (p["modelName"], p["modelVersion"], p["requestId"]) == ("m", "1", "gq-1")
    assert p["outputs"] == [{"name": "predict", "datatype": "INT64", "shape": [6], "data": p["predictions"]}]
    by_version = (await gql(client, PREDICT, model="m", records=records, version="2"))["data"]["predict"]
    assert by_version["modelVersion"] == "2" and by_version["predictions"] == models[2].predict(X).tolist()
    assert len(by_version["requestId"]) == 32  # a new id when the caller sent none


@pytest.mark.parametrize(
    ("variables", "code", "field", "message"),
    # fmt: off
    [
        ({"model": "m", "records": [{"x1": "a", "x2": 1.0}]}, "BAD_USER_INPUT", "x1", "input 'x1': expected FP64"),
        ({"model": "m", "records": [{"x1": 1.0}]}, "BAD_USER_INPUT", "x2", "missing input 'x2'"),
        ({"model": "m", "records": [{"x1": 1.0, "x2": 2.0, "x3": 0.0}]}, "BAD_USER_INPUT", "x3",
         "unexpected input 'x3'"),
        ({"model": "m", "records": []}, "BAD_USER_INPUT", "records", "records must be a non-empty list"),
        ({"model": "m", "records": {"x1": [1.0]}}, "BAD_USER_INPUT", "records", "records must be a non-empty list"),
        ({"model": "m", "records": [[1.0, 2.0, 3.0]]}, "BAD_USER_INPUT", "records", "instance 0 has 3 values"),
        ({"model": "other", "records": [{"x1": 1.0, "x2": 2.0}]}, "NOT_FOUND", None,
         "model 'other' is not served here"),
        ({"model": "m@staging", "records": [{"x1": 1.0, "x2": 2.0}]}, "NOT_FOUND", None, "has no alias 'staging'"),
        ({"model": "m", "version": "9", "records": [{"x1": 1.0, "x2": 2.0}]}, "NOT_FOUND", None,
         "has no version 9"),
    ],
    # fmt: on
    ids=["wrong-type", "missing", "extra", "empty", "not-a-list", "list-row-too-long", "not-served", "alias",
         "version"],
)
async def test_predict_errors_are_graphql_errors_naming_the_field(
    client: httpx.AsyncClient, variables: dict[str, Any], code: str, field: str | None, message: str
) -> None:
    body = await gql(client, PREDICT, **variables)
    assert body["data"] is None
    (error,) = body["errors"]
    assert message in error["message"] and error["path"] == ["predict"]
    assert error["extensions"]["code"] == code
    assert error["extensions"].get("field") == field


async def test_model_lookup_by_alias_and_unknown_names(client: httpx.AsyncClient) -> None:
    query = "query($n: String!) { model(name: $n) { name versions { version } } }"
    assert (await gql(client, query, n="m@champion"))["data"]["model"]["name"] == "m"
    for name, message in [("m@staging", "has no alias 'staging'"), ("other", "not served here")]:
        (error,) = (await gql(client, query, n=name))["errors"]
        assert message in error["message"] and error["extensions"]["code"] == "NOT_FOUND"


async def test_graphql_syntax_errors_are_reported_not_raised(client: httpx.AsyncClient) -> None:
    body = await gql(client, "{ nope }")
    assert "Cannot query field 'nope'" in body["errors"][0]["message"]


def test_no_graphql_route_without_strawberry(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from shipyard.serving import graphql

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "strawberry" else real(name, *a))
    assert graphql.graphql_endpoints(None, 1024) == []  # type: ignore[arg-type]


def test_every_error_class_has_a_graphql_code() -> None:
    assert code_for(errors.ModelNotServed("x", [])) == "NOT_FOUND"
    assert code_for(errors.PayloadTooLarge(10, 5)) == "BAD_USER_INPUT"
    assert code_for(errors.InferenceError("boom")) == "INTERNAL_SERVER_ERROR"
    assert code_for(errors.IdenticalVersion("m", 1, "0" * 64)) == "CONFLICT"
    assert code_for(errors.Unauthenticated("no credentials")) == "UNAUTHENTICATED"
    assert extensions_for(errors.InvalidInput("bad", field="x1")) == {
        "code": "BAD_USER_INPUT", "status": 400, "kind": "invalid_input", "type": "InvalidInput", "field": "x1"}
