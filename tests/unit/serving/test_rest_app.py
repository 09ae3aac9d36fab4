"""The REST app in-process through httpx.ASGITransport: routes, model resolution, error statuses."""

from __future__ import annotations

import gzip
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import numpy as np
import orjson
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression

from shipyard import errors
from shipyard.config import Settings
from shipyard.registry import Registry
from shipyard.serving.rest.errors import error_body, error_headers, status_for
from shipyard.serving.server import Server, build_server, started
from shipyard.types import ModelRef

pytestmark = pytest.mark.anyio

X = pd.DataFrame({"x1": [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0], "x2": [7.0, 5.0, 6.0, 1.0, 3.0, 0.0, 4.0, 2.0]})
Y = (X["x1"] > X["x2"]).astype(int)
LIMIT = 4096


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def register_models(registry: Registry) -> dict[int, LogisticRegression]:
    """m:1 (alias champion) and m:2 predict opposite classes; 'other' is registered but not served."""
    first = LogisticRegression().fit(X, Y)
    second = LogisticRegression().fit(X, 1 - Y)
    registry.register(first, "m", sample=X.head(3), alias="champion")
    registry.register(second, "m", sample=X.head(3))
    registry.register(first, "other", sample=X.head(3))
    return {1: first, 2: second}


def fast(settings: Settings) -> Settings:
    # alias_refresh_seconds=0: an alias move is seen by the very next request
    return settings.replace(alias_refresh_seconds=0, max_body_bytes=LIMIT)


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Settings, Registry, dict[int, Any]]]:
    """One registry for the tests that only read it: registering per test would make this module slow."""
    settings = Settings(home=tmp_path_factory.mktemp("rest") / "home", workers=1)
    registry = Registry.from_settings(settings)
    try:
        yield settings, registry, register_models(registry)
    finally:
        registry.close()


@pytest.fixture
def models(shared: tuple[Settings, Registry, dict[int, Any]]) -> dict[int, LogisticRegression]:
    return shared[2]


@pytest.fixture
def server(shared: tuple[Settings, Registry, dict[int, Any]]) -> Server:
    """A fresh server (nothing loaded, not ready) on the shared registry, serving only 'm'."""
    settings, registry, _ = shared
    return build_server(fast(settings), ["m"], registry=registry)


def client(server: Server) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=server.app), base_url="http://shipyard.test")


@asynccontextmanager
async def serving(server: Server) -> AsyncIterator[httpx.AsyncClient]:
    async with started(server), client(server) as c:
        yield c


def v2_body(rows: pd.DataFrame, **extra: Any) -> dict[str, Any]:
    inputs = [{"name": c, "datatype": "FP64", "shape": [len(rows)], "data": rows[c].tolist()} for c in rows.columns]
    return {"inputs": inputs, **extra}


def predictions(response: httpx.Response) -> list[int]:
    assert response.status_code == 200, response.text
    return response.json()["outputs"][0]["data"]  # type: ignore[no-any-return]


# -- routes --------------------------------------------------------------------------


async def test_ready_only_after_the_models_are_loaded(server: Server) -> None:
    async with client(server) as c:
        assert (await c.get("/v2/health/live")).status_code == 200
        not_yet = await c.get("/v2/health/ready")
        assert not_yet.status_code == 503 and not_yet.json() == {"ready": False}
        assert (await c.get("/v2/models/m/ready")).status_code == 503
        async with started(server):
            assert (await c.get("/v2/health/ready")).json() == {"ready": True}
            assert (await c.get("/v2/models/m/ready")).json() == {"name": "m", "ready": True}


async def test_server_and_model_metadata(server: Server) -> None:
    async with serving(server) as c:
        meta = (await c.get("/v2")).json()
        assert meta["name"] == "shipyard" and "binary_tensor_data" in meta["extensions"]
        model = (await c.get("/v2/models/m")).json()
        assert model["versions"] == ["2"] and model["platform"] == "shipyard_sklearn"
        assert [(i["name"], i["datatype"], i["shape"]) for i in model["inputs"]] == [
            ("x1", "FP64", [-1]),
            ("x2", "FP64", [-1]),
        ]
        assert model["parameters"]["signature_format"] == "columns"
        assert (await c.get("/v2/models/m/versions/1")).json()["versions"] == ["1"]
        assert (await c.get("/v2/models/m@champion")).json()["versions"] == ["1"]
        listed = (await c.get("/v1/models")).json()["models"]
        assert [m["name"] for m in listed] == ["m"]


async def test_both_apis_predict_like_the_model(server: Server, models: dict[int, LogisticRegression]) -> None:
    expected = models[2].predict(X).tolist()
    async with serving(server) as c:
        v2 = await c.post("/v2/models/m/infer", json=v2_body(X, id="abc"))
        assert predictions(v2) == expected
        assert v2.json()["id"] == "abc" and v2.json()["model_version"] == "2"
        v1 = await c.post("/v1/models/m:predict", json={"instances": X.to_dict(orient="records")})
        assert v1.status_code == 200, v1.text
        assert v1.json()["predictions"] == expected


async def test_binary_outputs_come_after_the_json_header(server: Server, models: dict[int, LogisticRegression]) -> None:
    async with serving(server) as c:
        r = await c.post("/v2/models/m/infer", json=v2_body(X, parameters={"binary_data_output": True}))
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "application/octet-stream"
        n = int(r.headers["inference-header-content-length"])
        (out,) = orjson.loads(r.content[:n])["outputs"]
        assert out["parameters"]["binary_data_size"] == len(r.content) - n
        assert np.frombuffer(r.content[n:], "<i8").tolist() == models[2].predict(X).tolist()


async def test_gzip_request_bodies_are_read(server: Server) -> None:
    async with serving(server) as c:
        body = gzip.compress(orjson.dumps(v2_body(X.head(2))))
        r = await c.post("/v2/models/m/infer", content=body, headers={"Content-Encoding": "gzip"})
        assert r.status_code == 200, r.text


async def test_docs_and_openapi_are_served(server: Server) -> None:
    async with serving(server) as c:
        assert "/v2/models/{name}/infer" in (await c.get("/openapi.json")).json()["paths"]
        assert (await c.get("/docs")).status_code == 200


# -- which model answers ---------------------------------------------------------------


async def test_a_registered_model_the_server_was_not_started_with_is_404(server: Server) -> None:
    async with serving(server) as c:
        for method, path in [
            ("GET", "/v2/models/other"),
            ("GET", "/v2/models/other/ready"),
            ("POST", "/v2/models/other/infer"),
            ("POST", "/v1/models/other:predict"),
        ]:
            r = await c.request(method, path, json=v2_body(X.head(1)))
            assert r.status_code == 404, (path, r.text)
            assert "'other'" in r.json()["error"]


async def test_alias_and_version_pick_the_model(server: Server, models: dict[int, LogisticRegression]) -> None:
    async with serving(server) as c:
        body = v2_body(X)
        by_alias = await c.post("/v2/models/m@champion/infer", json=body)
        assert by_alias.json()["model_name"] == "m" and by_alias.json()["model_version"] == "1"
        assert predictions(by_alias) == models[1].predict(X).tolist()
        by_version = await c.post("/v2/models/m/versions/1/infer", json=body)
        assert predictions(by_version) == models[1].predict(X).tolist()
        newest = await c.post("/v2/models/m/infer", json=body)
        assert predictions(newest) == models[2].predict(X).tolist()
        v1 = await c.post("/v1/models/m@champion:predict", json={"instances": X.to_dict(orient="records")})
        assert v1.json()["model_version"] == "1"


async def test_an_alias_move_reaches_the_running_server(settings: Settings, registry: Registry) -> None:
    models = register_models(registry)  # a registry of its own: this test moves an alias
    server = build_server(fast(settings), ["m"], registry=registry)
    async with serving(server) as c:
        assert (await c.post("/v2/models/m@champion/infer", json=v2_body(X))).json()["model_version"] == "1"
        registry.set_alias("m", "champion", 2)
        moved = await c.post("/v2/models/m@champion/infer", json=v2_body(X))
        assert moved.json()["model_version"] == "2"
        assert predictions(moved) == models[2].predict(X).tolist()
        assert (await c.get("/v2/models/m@champion")).json()["versions"] == ["2"]


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/v2/models/m@nope/infer", "model 'm' has no alias 'nope'"),
        ("/v2/models/m/versions/9/infer", "model 'm' has no version 9"),
        ("/v2/models/m/versions/latest/infer", "model 'm' has no version latest"),
        ("/v2/models/ghost/infer", "model 'ghost' is not served here"),
    ],
    ids=["alias", "version", "non-numeric-version", "model"],
)
async def test_unknown_alias_version_or_model_is_404(server: Server, path: str, message: str) -> None:
    async with serving(server) as c:
        r = await c.post(path, json=v2_body(X.head(1)))
        assert r.status_code == 404
        assert message in r.json()["error"]


# -- errors map to statuses ---------------------------------------------------------------

BAD_REQUESTS = [
    ("invalid-json", "POST", "/v2/models/m/infer", {}, b"{", 400, "request body is not valid JSON"),
    ("wrong-type", "POST", "/v1/models/m:predict", {}, b'{"inputs": {"x1": ["a"], "x2": [1]}}', 400, "input 'x1'"),
    ("bad-model-name", "POST", "/v2/models/bad%20name/infer", {}, b"{}", 400, "invalid model name 'bad name'"),
    ("too-large", "POST", "/v2/models/m/infer", {}, b" " * (LIMIT + 1), 413, f"exceeds the limit of {LIMIT} bytes"),
    (
        "gzip-bomb",
        "POST",
        "/v2/models/m/infer",
        {"Content-Encoding": "gzip"},
        gzip.compress(b" " * (LIMIT * 4)),
        413,
        f"exceeds the limit of {LIMIT} bytes",
    ),
    (
        "truncated-gzip",
        "POST",
        "/v2/models/m/infer",
        {"Content-Encoding": "gzip"},
        gzip.compress(b'{"inputs": []}')[:-6],
        400,
        "the compressed stream is truncated",
    ),
    ("not-gzip", "POST", "/v2/models/m/infer", {"Content-Encoding": "gzip"}, b"{}", 400, "body is not valid gzip data"),
    ("brotli", "POST", "/v2/models/m/infer", {"Content-Encoding": "br"}, b"{}", 415, "content encoding 'br'"),
    ("text-plain", "POST", "/v2/models/m/infer", {"Content-Type": "text/plain"}, b"{}", 415, "'text/plain'"),
    ("no-route", "GET", "/v3/models", {}, b"", 404, "no route for GET /v3/models"),
    ("wrong-method", "GET", "/v2/models/m/infer", {}, b"", 405, "GET is not allowed on /v2/models/m/infer"),
]


@pytest.mark.parametrize(
    ("method", "path", "headers", "body", "status", "message"),
    [c[1:] for c in BAD_REQUESTS],
    ids=[c[0] for c in BAD_REQUESTS],
)
async def test_errors_map_to_statuses_with_a_json_error_and_request_id(
    server: Server, method: str, path: str, headers: dict[str, str], body: bytes, status: int, message: str
) -> None:
    async with serving(server) as c:
        r = await c.request(method, path, content=body, headers={"X-Request-ID": "req-1", **headers})
        assert r.status_code == status, r.text
        assert r.headers["content-type"] == "application/json"
        assert r.headers["x-request-id"] == "req-1"
        assert message in r.json()["error"]


async def test_a_model_that_raises_gives_500_naming_the_version(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(inputs: Any) -> Any:
        raise ValueError("boom")

    async with serving(server) as c:
        monkeypatch.setattr(server.repository.get(ModelRef("m", version=2)).runtime, "predict", broken)
        r = await c.post("/v2/models/m/infer", json=v2_body(X.head(1)))
        assert r.status_code == 500
        assert "model m:2 failed while predicting: ValueError: boom" in r.json()["error"]


async def test_an_unexpected_error_is_a_500_that_hides_details(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken() -> Any:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(server.dataplane, "server_metadata", broken)
    async with serving(server) as c:
        r = await c.get("/v2", headers={"X-Request-ID": "req-9"})
        assert r.status_code == 500
        assert r.json() == {"error": "internal server error (request id req-9)", "kind": "internal"}


async def test_a_request_id_is_made_when_none_is_sent(server: Server) -> None:
    async with serving(server) as c:
        r = await c.post("/v2/models/m/infer", json=v2_body(X.head(1)))
        assert len(r.headers["x-request-id"]) == 32
        assert r.json()["id"] == r.headers["x-request-id"]
        missing = await c.get("/nowhere")
        assert len(missing.headers["x-request-id"]) == 32


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (errors.PayloadTooLarge(10, 5), 413),
        (errors.UnsupportedMediaType("no"), 415),
        (errors.InvalidInput("no", field="x"), 400),
        (errors.ModelNotFound("m", alias="a"), 404),
        (errors.ModelNotReady("loading"), 503),
        (errors.ArtifactIntegrityError("m", 1, "f", "a" * 64, None), 500),
        (errors.InferenceError("boom"), 500),
        (errors.MissingDependency("onnxruntime", "onnx"), 500),
        (errors.VersionConflict("race"), 409),
        (errors.IdenticalVersion("fraud", 3, "0" * 64), 409),
        (errors.ConfigError("bad"), 500),
        (errors.JobNotFound("j1"), 404),
        (errors.BrokerError("broker down"), 503),
        (errors.RequestTimeout(2.0), 504),
        (errors.Unauthenticated("no credentials"), 401),
        (errors.PermissionDenied("not yours"), 403),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, Exception) else None,
)
def test_status_table_maps_each_error(error: errors.ShipyardError, status: int) -> None:
    assert status_for(error) == status


def test_error_body_carries_kind_type_and_the_field_when_known() -> None:
    assert error_body(errors.InvalidInput("bad x", field="x")) == {
        "error": "bad x", "kind": "invalid_input", "type": "InvalidInput", "field": "x"}
    assert error_body(errors.ModelNotServed("m", ["a"])) == {
        "error": errors.ModelNotServed("m", ["a"]).message, "kind": "not_found", "type": "ModelNotServed"}
    assert error_body(errors.InvalidOption("bad", option="batch_size")) == {
        "error": "bad", "kind": "invalid_input", "type": "InvalidOption", "field": "batch_size"}


def test_unavailable_errors_and_only_they_ask_to_retry_after() -> None:
    assert error_headers(errors.Overloaded("m", 8, retry_after=2.4)) == {"Retry-After": "2"}
    assert error_headers(errors.BrokerError("broker down")) == {"Retry-After": "1"}
    assert error_headers(errors.InvalidInput("no")) is None
