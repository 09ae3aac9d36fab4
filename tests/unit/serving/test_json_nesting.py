"""Deeply nested JSON gets one answer on every transport: 400, the same message, field 'body' (never a 500).

/graphql used to parse its body with the standard library, so 100,000 levels
raised RecursionError and answered 500 in plain text; REST at 1,000 levels
(inside orjson's own limit) recursed while flattening tensor data and answered 500.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from urllib.parse import quote

import httpx
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression

from shipyard.config import Settings
from shipyard.errors import InvalidInput
from shipyard.registry import Registry
from shipyard.serving.server import build_server, started
from shipyard.streams.broker import Message
from shipyard.streams.scoring import decode_message

pytestmark = pytest.mark.anyio

X = pd.DataFrame({"x1": [0.0, 1.0, 2.0, 3.0], "x2": [3.0, 1.0, 2.0, 0.0]})
Y = (X["x1"] > X["x2"]).astype(int)
LIMIT = 128  # MAX_JSON_DEPTH, written out: the documented number is part of the contract
MESSAGE = f"request body nests arrays and objects more than {LIMIT} levels deep"
GQL = 'query($r: JSON!){predict(model:"m", records:$r){predictions}}'


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Settings, Registry]]:
    settings = Settings(home=tmp_path_factory.mktemp("nesting") / "home", workers=1)
    reg = Registry.from_settings(settings)
    try:
        reg.register(LogisticRegression().fit(X, Y), "m", sample=X)
        yield settings, reg
    finally:
        reg.close()


@pytest.fixture
async def client(registry: tuple[Settings, Registry]) -> AsyncIterator[httpx.AsyncClient]:
    settings, reg = registry
    server = build_server(settings, ["m"], registry=reg)
    transport = httpx.ASGITransport(app=server.app)
    async with started(server), httpx.AsyncClient(transport=transport, base_url="http://shipyard.test") as c:
        yield c


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def bodies(value: bytes) -> dict[str, tuple[str, bytes]]:
    """One request per transport with ``value`` where the caller's data goes."""
    return {
        "v2": ("/v2/models/m/infer",
               b'{"inputs":[{"name":"x1","datatype":"FP64","shape":[1],"data":' + value + b"}]}"),
        "v1-instances": ("/v1/models/m:predict", b'{"instances":' + value + b"}"),
        "v1-record": ("/v1/models/m:predict", b'{"instances":[{"x1":' + value + b',"x2":1}]}'),
        "v1-columns": ("/v1/models/m:predict", b'{"inputs":{"x1":' + value + b',"x2":[1]}}'),
        "jobs": ("/v1/models/m/jobs", b'{"instances":' + value + b"}"),
        "graphql": ("/graphql", b'{"query":"' + GQL.replace('"', '\\"').encode() + b'","variables":{"r":' + value
                    + b"}}"),
    }


@pytest.mark.parametrize("depth", [LIMIT + 1, 1000, 100_000])
async def test_too_deep_is_the_same_400_on_every_http_route(client: httpx.AsyncClient, depth: int) -> None:
    for transport, (path, body) in bodies(nested(depth)).items():
        r = await client.post(path, content=body, headers={"Content-Type": "application/json"})
        assert r.status_code == 400, (transport, r.text)
        assert r.headers["content-type"] == "application/json", transport
        doc = r.json()
        assert (doc["error"], doc["field"]) == (MESSAGE, "body"), transport


async def test_graphql_refusal_also_reads_as_a_graphql_error(client: httpx.AsyncClient) -> None:
    path, body = bodies(nested(100_000))["graphql"]
    doc = (await client.post(path, content=body, headers={"Content-Type": "application/json"})).json()
    (error,) = doc["errors"]
    assert error["message"] == MESSAGE
    assert error["extensions"] == {"code": "BAD_USER_INPUT", "status": 400, "kind": "invalid_input",
                                   "type": "InvalidInput", "field": "body"}


async def test_graphql_get_variables_go_through_the_same_parser(client: httpx.AsyncClient) -> None:
    variables = '{"r":' + nested(2000).decode() + "}"
    r = await client.get(f"/graphql?query={quote(GQL)}&variables={quote(variables)}",
                         headers={"Accept": "application/json"})
    assert r.status_code == 400, r.text
    assert r.json()["error"] == f"query parameter 'variables' nests arrays and objects more than {LIMIT} levels deep"
    assert r.json()["field"] == "variables"


async def test_graphql_body_errors_are_json_not_plain_text(client: httpx.AsyncClient) -> None:
    r = await client.post("/graphql", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["field"] == "body"
    assert r.json()["error"].startswith("request body is not valid JSON")
    for not_an_object in (b'"AAA"', b"12", b"null"):  # found by schemathesis: "AAA" was a 500
        r = await client.post("/graphql", content=not_an_object, headers={"Content-Type": "application/json"})
        assert r.status_code == 400 and r.json()["field"] == "body", r.text
        assert r.json()["error"].startswith("a GraphQL request body must be a JSON object")
    r = await client.post("/graphql", json={"variables": {}})
    assert r.status_code == 400 and r.json()["error"] == "No GraphQL query found in the request"
    r = await client.post("/graphql", content=b"query=x", headers={"Content-Type": "text/csv"})
    assert r.status_code == 415 and r.json()["field"] == "Content-Type"


async def test_graphql_bodies_have_the_rest_size_limit(registry: tuple[Settings, Registry]) -> None:
    settings, reg = registry
    server = build_server(settings.replace(max_body_bytes=2048), ["m"], registry=reg)
    async with started(server), httpx.AsyncClient(transport=httpx.ASGITransport(app=server.app),
                                                  base_url="http://shipyard.test") as c:
        r = await c.post("/graphql", json={"query": "{ models { name } }", "variables": {"pad": "x" * 4096}})
        assert r.status_code == 413 and "exceeds the limit of 2048 bytes" in r.json()["error"]
        r = await c.post("/graphql", json={"query": "{ models { name } }"})
        assert r.status_code == 200 and r.json()["data"]["models"] == [{"name": "m"}]


async def test_at_the_limit_every_route_answers_without_a_server_error(client: httpx.AsyncClient) -> None:
    # the deepest document allowed, with the data as deep as it can be: refused as bad data, never a 500
    for transport, (path, body) in bodies(nested(LIMIT - 4)).items():
        r = await client.post(path, content=body, headers={"Content-Type": "application/json"})
        assert r.status_code < 500, (transport, r.text)


def test_a_stream_message_too_deep_is_refused_with_the_same_reason(registry: tuple[Settings, Registry]) -> None:
    settings, reg = registry
    model = reg.load("m")
    with pytest.raises(InvalidInput) as info:
        decode_message(Message(id="1", value=b'{"instances":' + nested(100_000) + b"}"), model)
    assert info.value.message == MESSAGE.replace("request body", "message") and info.value.field == "value"
