"""The route table: the served routes and /openapi.json come from it and agree with what the server enforces."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator

import httpx
import orjson
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression

from shipyard.config import Settings
from shipyard.protocol.json_body import MAX_JSON_DEPTH
from shipyard.registry import Registry
from shipyard.serving.rest.openapi import PATH_PARAMETERS, SCHEMAS
from shipyard.serving.server import Server, build_server, started
from shipyard.types import ModelRef

pytestmark = pytest.mark.anyio

X = pd.DataFrame({"x1": [0.0, 1.0, 2.0, 3.0], "x2": [3.0, 1.0, 2.0, 0.0]})
Y = (X["x1"] > X["x2"]).astype(int)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Settings, Registry]]:
    settings = Settings(home=tmp_path_factory.mktemp("routes") / "home", workers=1)
    reg = Registry.from_settings(settings)
    try:
        reg.register(LogisticRegression().fit(X, Y), "m", sample=X)
        yield settings, reg
    finally:
        reg.close()


@pytest.fixture
def server(registry: tuple[Settings, Registry]) -> Server:
    settings, reg = registry
    return build_server(settings, ["m"], registry=reg)


@pytest.fixture
async def client(server: Server) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=server.app)
    async with started(server), httpx.AsyncClient(transport=transport, base_url="http://shipyard.test") as c:
        yield c


async def test_openapi_documents_exactly_the_routes_served(server: Server, client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    served = {(e.path, m.lower()) for e in server.endpoints for m in e.methods}
    documented = {(path, method) for path, ops in spec["paths"].items() for method in ops}
    assert documented == served
    assert {"/graphql", "/metrics", "/v2/models/{name}/infer", "/v1/models/{name}:predict"} <= set(spec["paths"])
    refs = set(re.findall(r'"#/components/schemas/(\w+)"', orjson.dumps(spec).decode()))
    assert refs <= set(spec["components"]["schemas"])  # every reference resolves


async def test_openapi_declares_the_name_pattern_the_server_enforces(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    (name,) = [p for p in spec["paths"]["/v2/models/{name}"]["get"]["parameters"] if p["name"] == "name"]
    pattern = re.compile(name["schema"]["pattern"])
    for ok in ["m", "a" * 128, "m@champion", "m:3", "fraud-v2.1_x"]:
        assert pattern.search(ok), ok
        ModelRef.parse(ok)
    for bad in ["a" * 129, "-m", "m n", "m@", "m:x", "m:²", ""]:
        assert not pattern.search(bad), bad
        with pytest.raises(Exception, match="invalid"):
            ModelRef.parse(bad)
    assert "128" in name["description"]


async def test_openapi_inputs_need_at_least_one_tensor(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    assert spec["components"]["schemas"]["InferenceRequest"]["properties"]["inputs"]["minItems"] == 1
    r = await client.post("/v2/models/m/infer", json={"inputs": []})
    assert r.status_code == 400 and r.json()["field"] == "inputs"


async def test_openapi_declares_metrics_as_prometheus_text(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    assert list(spec["paths"]["/metrics"]["get"]["responses"]["200"]["content"]) == ["text/plain"]
    r = await client.get("/metrics")
    assert r.headers["content-type"].startswith("text/plain")


async def test_openapi_declares_the_error_body_and_every_path_parameter(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            assert "200" in op["responses"] or "202" in op["responses"], (method, path)
            declared = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
            assert declared == set(re.findall(r"\{(\w+)\}", path)) <= set(PATH_PARAMETERS)
            for status, reply in op["responses"].items():
                if status.startswith(("4", "5")) and "application/json" in reply["content"]:
                    assert reply["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1] in {
                        "Error", "Ready", "ModelReady"}
    assert f"{MAX_JSON_DEPTH} levels" in spec["info"]["description"]
    assert set(SCHEMAS) == set(spec["components"]["schemas"])


async def test_a_405_names_the_allowed_methods(client: httpx.AsyncClient) -> None:
    r = await client.get("/v2/models/m/infer")
    assert r.status_code == 405 and r.headers["allow"] == "POST"
    assert r.json() == {"error": "GET is not allowed on /v2/models/m/infer"}
    r = await client.delete("/v2/health/live")
    assert r.status_code == 405 and r.headers["allow"] == "GET, HEAD"
    r = await client.put("/graphql")
    assert r.status_code == 405 and r.headers["allow"] == "GET, HEAD, POST"


async def test_every_405_allow_header_matches_the_route_table(server: Server, client: httpx.AsyncClient) -> None:
    for e in server.endpoints:
        path = (e.path.replace("{name}", "m").replace("{version}", "1").replace("{job_id}", "j")
                .replace("{alias}", "a"))
        r = await client.request("PATCH", path)
        assert r.status_code == 405, path
        assert set(r.headers["allow"].split(", ")) == set(e.allow.split(", ")), path


async def test_server_metadata_does_not_tell_the_interpreter_version(client: httpx.AsyncClient) -> None:
    import platform

    r = await client.get("/v2")
    meta = r.json()
    assert meta["name"] == "shipyard" and "version" in meta
    assert "python" not in meta and platform.python_version() not in r.text


async def test_versions_past_64_bits_are_not_found_not_a_server_error(client: httpx.AsyncClient) -> None:
    huge = "39109302690788723366"  # found by schemathesis: the registry query overflowed into a 500
    for path in (f"/v2/models/m/versions/{huge}", f"/v2/models/m/versions/{huge}/ready"):
        r = await client.get(path)
        assert r.status_code == 404 and r.json()["error"] == f"model 'm' has no version {huge}", path
    r = await client.get(f"/v2/models/m:{huge}")
    assert r.status_code == 400 and "from 1 to 9223372036854775807" in r.json()["error"]
    r = await client.post(f"/v2/models/m/versions/{huge}/infer", json={"inputs": []})
    assert r.status_code == 404
