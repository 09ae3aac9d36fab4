"""shipyard.Client / AsyncClient without sockets: retries and errors on httpx.MockTransport, and the
real REST app in-process (httpx.ASGITransport) for what predict accepts and returns."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import numpy as np
import orjson
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression

import shipyard
from shipyard import errors
from shipyard.client import AsyncClient, Client
from shipyard.client._client import backoff_delay
from shipyard.config import Settings
from shipyard.registry import Registry
from shipyard.serving.server import build_server, started

pytestmark = pytest.mark.anyio

X = pd.DataFrame({"x1": [0.0, 1.0, 2.0, 3.0, 4.0, 5.0], "x2": [5.0, 4.0, 0.0, 1.0, 3.0, 2.0]})
Y = (X["x1"] > X["x2"]).astype(int)
INFER_OK = {"model_name": "m", "model_version": "1", "id": "r",
            "outputs": [{"name": "predict", "datatype": "INT64", "shape": [1], "data": [1]}]}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Sleeps:
    """A fake asyncio.sleep that records the waits."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


def mock(*answers: httpx.Response | Exception) -> tuple[httpx.MockTransport, list[httpx.Request]]:
    """A transport giving ``answers`` in turn (the last one again when they run out)."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        answer = answers[min(len(seen), len(answers)) - 1]
        if isinstance(answer, Exception):
            raise answer
        return answer

    return httpx.MockTransport(handler), seen


def error(status: int, message: str, field: str | None = None, *, kind: str | None = None, type: str | None = None,
          **headers: str) -> httpx.Response:
    """An error answer: shipyard's body when ``kind``/``type`` are given, else only a message (and field)."""
    body: dict[str, Any] = {"error": message}
    if field is not None:
        body["field"] = field
    if kind is not None:
        body["kind"] = kind
    if type is not None:
        body["type"] = type
    return httpx.Response(status, json=body, headers=headers)


def mocked(transport: httpx.MockTransport, sleeps: Sleeps, **kwargs: Any) -> AsyncClient:
    return AsyncClient("http://shipyard.test", http_transport=transport, sleep=sleeps, backoff=0.1, **kwargs)


# -- retries ---------------------------------------------------------------------------------


def test_backoff_doubles_up_to_the_cap_and_retry_after_wins() -> None:
    assert [backoff_delay(i, 0.1, 1.0, None) for i in range(5)] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0])
    assert backoff_delay(0, 0.1, 1.0, 3.0) == 3.0  # the server knows best
    assert backoff_delay(4, 0.1, 1.0, 0.0) == 1.0


async def test_503_is_retried_honouring_retry_after_then_succeeds() -> None:
    transport, seen = mock(error(503, "loading", **{"Retry-After": "2"}), error(503, "loading"),
                           httpx.Response(200, json=INFER_OK))
    sleeps = Sleeps()
    async with mocked(transport, sleeps) as client:
        out = await client.predict("m", {"x1": [1.0], "x2": [2.0]})
    assert out["predict"].tolist() == [1]
    assert len(seen) == 3 and sleeps.waits == [2.0, 0.2]


async def test_retries_run_out_with_model_not_ready() -> None:
    transport, seen = mock(error(503, "model m is overloaded", **{"Retry-After": "1"}))
    sleeps = Sleeps()
    async with mocked(transport, sleeps, retries=2) as client:
        with pytest.raises(errors.ModelNotReady, match="model m is overloaded") as info:
            await client.infer("m", {"x1": [1.0]})
    assert len(seen) == 3 and sleeps.waits == [1.0, 1.0]
    assert getattr(info.value, "retry_after", None) == 1.0


async def test_no_wait_past_the_timeout() -> None:
    transport, seen = mock(error(503, "busy", **{"Retry-After": "120"}))
    sleeps = Sleeps()
    async with mocked(transport, sleeps, timeout=5) as client:
        with pytest.raises(errors.ModelNotReady, match="busy"):
            await client.infer("m", {"x1": [1.0]})
    assert len(seen) == 1 and sleeps.waits == []


async def test_refused_connection_is_retried_then_reported() -> None:
    transport, seen = mock(httpx.ConnectError("connection refused"))
    sleeps = Sleeps()
    async with mocked(transport, sleeps, retries=3) as client:
        with pytest.raises(errors.ShipyardError, match="cannot reach http://shipyard.test: connection refused"):
            await client.metadata()
        assert await client.health() == {"live": False, "ready": False}
    assert sleeps.waits == pytest.approx([0.1, 0.2, 0.4])


async def test_a_read_timeout_is_not_retried() -> None:
    transport, seen = mock(httpx.ReadTimeout("slow"))
    async with mocked(transport, Sleeps(), timeout=2) as client:
        with pytest.raises(errors.ShipyardError, match="no answer from http://shipyard.test/v2 within"):
            await client.metadata()
    assert len(seen) == 1


# -- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("response", "cls", "field"),
    [
        (error(400, "input 'x1': expected FP64", "x1"), errors.InvalidInput, "x1"),
        (error(413, "request body of 9 bytes exceeds the limit"), errors.PayloadTooLarge, None),
        (error(404, "model 'm' has no version 9"), errors.ModelNotFound, None),
        (error(404, "model 'q' is not served here (this server serves m)", kind="not_found", type="ModelNotServed"),
         errors.ModelNotServed, None),
        (error(404, "no asynchronous request with id 'j'", kind="not_found", type="JobNotFound"),
         errors.JobNotFound, None),
        (error(409, "identical to m:1", kind="conflict", type="IdenticalVersion"), errors.IdenticalVersion, None),
        (error(400, "bad batch_size", "batch_size", kind="invalid_input", type="InvalidOption"),
         errors.InvalidOption, "batch_size"),
        (error(401, "no credentials", kind="unauthenticated", type="SomeNewerError"), errors.Unauthenticated, None),
        (error(403, "not yours", kind="forbidden"), errors.PermissionDenied, None),
        (error(500, "model m:1 failed while predicting", kind="internal", type="InferenceError"),
         errors.InferenceError, None),
        (error(500, "model m:1 failed while predicting"), errors.ShipyardError, None),
    ],
    ids=["400", "413", "404", "404-not-served", "404-job", "409", "400-option", "401-unknown-type", "403-kind-only",
         "500-inference", "500-bare"],
)
async def test_server_errors_become_shipyard_exceptions_with_the_servers_message(
    response: httpx.Response, cls: type[errors.ShipyardError], field: str | None
) -> None:
    transport, seen = mock(response)
    async with mocked(transport, Sleeps()) as client:
        with pytest.raises(cls) as info:
            await client.infer("m", {"x1": [1.0]})
    assert type(info.value) is cls and len(seen) == 1  # no retry
    assert response.json()["error"] in str(info.value)
    assert getattr(info.value, "field", None) == field


async def test_without_type_or_kind_the_status_decides_never_the_message() -> None:
    transport, _ = mock(error(404, "model 'q' is not served here (this server serves m)"))
    async with mocked(transport, Sleeps()) as client:
        with pytest.raises(errors.ModelNotFound) as info:
            await client.infer("q", {"x1": [1.0]})
    assert type(info.value) is errors.ModelNotFound and info.value.name == "q"
    transport, _ = mock(error(500, "boom"))
    async with mocked(transport, Sleeps()) as client:
        with pytest.raises(errors.ShipyardError, match="^server answered 500: boom$"):
            await client.infer("m", {"x1": [1.0]})


async def test_an_unavailable_kind_is_retried_and_raised_as_the_servers_class() -> None:
    transport, seen = mock(error(503, "broker down", kind="unavailable", type="BrokerError", **{"Retry-After": "1"}))
    sleeps = Sleeps()
    async with mocked(transport, sleeps, retries=1) as client:
        with pytest.raises(errors.BrokerError, match="broker down") as info:
            await client.infer("m", {"x1": [1.0]})
    assert len(seen) == 2 and sleeps.waits == [1.0] and info.value.kind == "unavailable"


@pytest.mark.parametrize(
    "raised",
    [
        errors.InvalidInput.for_field("x1", "FP64", "BYTES"),
        errors.ModelNotServed("q", ["m"]),
        errors.JobNotFound("j"),
        errors.IdenticalVersion("m", 1, "0" * 64),
        errors.RequestTimeout(2.0),
        errors.Unauthenticated("no credentials"),
        errors.InferenceError("model m:1 failed while predicting"),
        errors.BrokerError("broker down"),
        errors.Overloaded("m", 8, retry_after=2.0),
    ],
    ids=lambda e: type(e).__name__,
)
async def test_grpc_errors_become_the_class_the_server_raised(raised: errors.ShipyardError) -> None:
    """The server's half (status code and trailing metadata) read by the client's half."""
    grpc = pytest.importorskip("grpc")
    from shipyard.client._grpc import GrpcTransport
    from shipyard.client._transport import Unavailable
    from shipyard.serving.grpc.errors import error_metadata, status_for

    failed = grpc.aio.AioRpcError(status_for(raised), grpc.aio.Metadata(),
                                  grpc.aio.Metadata(*error_metadata(raised, "rid-1")), raised.message)
    transport = GrpcTransport("127.0.0.1:1")  # never called: connecting is lazy
    try:
        got = transport._error(failed, 5.0, "m", None)
    finally:
        await transport.aclose()
    if raised.kind == "unavailable":
        assert isinstance(got, Unavailable) and got.retry_after == getattr(raised, "retry_after", 1.0)
        got = got.error
    assert type(got) is type(raised) and str(got) == raised.message
    assert getattr(got, "field", None) == getattr(raised, "field", None)


async def test_request_is_oip_binary_with_binary_outputs_asked() -> None:
    transport, seen = mock(httpx.Response(200, json=INFER_OK))
    async with mocked(transport, Sleeps(), headers={"Authorization": "Bearer t"}) as client:
        response = await client.infer("m@champion", {"x": np.array([1.5, 2.5])}, request_id="r")
    assert response.id == "r" and response.outputs[0].data.tolist() == [1]
    request = seen[0]
    assert request.url.path == "/v2/models/m@champion/infer" and request.headers["authorization"] == "Bearer t"
    n = int(request.headers["inference-header-content-length"])
    header = orjson.loads(request.content[:n])
    assert header["inputs"] == [{"name": "x", "datatype": "FP64", "shape": [2], "parameters": {"binary_data_size": 16}}]
    assert header["parameters"]["binary_data_output"] is True
    assert np.frombuffer(request.content[n:], "<f8").tolist() == [1.5, 2.5]


def test_bad_urls_and_arguments_are_refused() -> None:
    for url in ["ftp://host", "127.0.0.1:8000", "http://"]:
        with pytest.raises(errors.ConfigError, match="client URL must look like"):
            AsyncClient(url)
    with pytest.raises(errors.ConfigError, match="http_transport applies to http"):
        AsyncClient("grpc://127.0.0.1:1", http_transport=httpx.MockTransport(lambda r: httpx.Response(200)))
    with pytest.raises(errors.ConfigError):
        AsyncClient("http://x", timeout=0)


def test_client_is_exported_lazily_from_the_package() -> None:
    assert {"Client", "AsyncClient"} <= set(shipyard.__all__)
    assert shipyard.Client is Client and shipyard.AsyncClient is AsyncClient
    with pytest.raises(AttributeError):
        shipyard.NoSuchThing  # noqa: B018


def test_blocking_client_retries_too() -> None:
    transport, seen = mock(error(503, "loading", **{"Retry-After": "0"}), httpx.Response(200, json=INFER_OK))
    with Client("http://shipyard.test", http_transport=transport, backoff=0.001) as client:
        response = client.infer("m", {"x1": [1.0]})
        assert response.model_version == "1"
    assert len(seen) == 2


# -- predict against the real app, in-process ------------------------------------------------------


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Settings, Registry, LogisticRegression]]:
    settings = Settings(home=tmp_path_factory.mktemp("client") / "home", workers=1)
    registry = Registry.from_settings(settings)
    try:
        model = LogisticRegression().fit(X, Y)
        registry.register(model, "m", sample=X.head(3), alias="champion")
        plain = LogisticRegression().fit(X.to_numpy(), Y)
        registry.register(plain, "one", sample=X.to_numpy()[:3])  # one tensor input
        yield settings, registry, model
    finally:
        registry.close()


@pytest.fixture
async def client(shared: tuple[Settings, Registry, LogisticRegression]) -> AsyncIterator[AsyncClient]:
    settings, registry, _ = shared
    server = build_server(settings, ["m", "one"], registry=registry)
    async with started(server), AsyncClient(
        "http://shipyard.test", http_transport=httpx.ASGITransport(app=server.app)
    ) as c:
        yield c


KINDS: dict[str, tuple[Callable[[pd.DataFrame], Any], Callable[[Any], list[int]]]] = {
    "records": (lambda df: df.to_dict(orient="records"), lambda out: [r["predict"] for r in out]),
    "dataframe": (lambda df: df, lambda out: out["predict"].tolist()),
    "dict-of-arrays": (lambda df: {c: df[c].to_numpy() for c in df}, lambda out: out["predict"].tolist()),
    "dict-of-lists": (lambda df: df.to_dict(orient="list"), lambda out: out["predict"].tolist()),
}


@pytest.mark.parametrize("kind", sorted(KINDS))
async def test_predict_answers_in_the_kind_it_was_given(
    client: AsyncClient, shared: tuple[Settings, Registry, LogisticRegression], kind: str
) -> None:
    to_input, read = KINDS[kind]
    out = await client.predict("m", to_input(X))
    assert read(out) == shared[2].predict(X).tolist()
    if kind == "dataframe":
        assert isinstance(out, pd.DataFrame) and out.index.equals(X.index)
    if kind == "records":
        assert isinstance(out, list) and isinstance(out[0], dict)


async def test_an_array_goes_to_a_one_input_model_and_comes_back_an_array(
    client: AsyncClient, shared: tuple[Settings, Registry, LogisticRegression]
) -> None:
    out = await client.predict("one", X.to_numpy())
    assert isinstance(out, np.ndarray) and out.tolist() == shared[2].predict(X).tolist()
    with pytest.raises(errors.InvalidInput, match="an array can only go to a model with one input"):
        await client.predict("m", X.to_numpy())


async def test_predict_converts_numbers_to_the_models_datatypes_and_infer_sends_them_as_they_are(
    client: AsyncClient, shared: tuple[Settings, Registry, LogisticRegression]
) -> None:
    whole = X.astype(int)  # integer columns for a model that takes FP64
    expected = shared[2].predict(whole).tolist()
    assert [r["predict"] for r in await client.predict("m", whole.to_dict(orient="records"))] == expected
    assert (await client.predict("m", whole))["predict"].tolist() == expected
    with pytest.raises(errors.InvalidInput, match="input 'x1': expected FP64 .* got INT64") as info:
        await client.infer("m", {c: whole[c].to_numpy() for c in whole})
    assert info.value.field == "x1"


async def test_bad_records_raise_invalid_input_naming_the_field(client: AsyncClient) -> None:
    with pytest.raises(errors.InvalidInput) as info:
        await client.predict("m", [{"x1": 1.0, "x2": None}])
    assert info.value.field == "x2" and "expected finite numbers, got nan" in str(info.value)
    with pytest.raises(errors.InvalidInput, match="missing input 'x2'") as info:
        await client.predict("m", X[["x1"]])
    assert info.value.field == "x2"
    with pytest.raises(errors.ModelNotFound, match="model 'm' has no alias 'staging'"):
        await client.predict("m@staging", X)


async def test_metadata_and_health(client: AsyncClient) -> None:
    assert (await client.metadata())["name"] == "shipyard"
    meta = await client.metadata("m", version=1)
    assert [i["name"] for i in meta["inputs"]] == ["x1", "x2"] and meta["versions"] == ["1"]
    assert await client.health() == {"live": True, "ready": True}
    await client.wait_ready(timeout=1)


async def test_the_real_app_over_rest_raises_the_servers_own_class(client: AsyncClient) -> None:
    with pytest.raises(errors.ModelNotServed, match="model 'q' is not served here") as served:
        await client.predict("q", X)
    with pytest.raises(errors.ModelNotFound, match="model 'm' has no version 9") as version:
        await client.metadata("m", version=9)
    with pytest.raises(errors.InvalidInput, match="missing input 'x2'") as missing:
        await client.predict("m", X[["x1"]])
    assert (type(served.value), type(version.value), type(missing.value)) == (
        errors.ModelNotServed, errors.ModelNotFound, errors.InvalidInput)
    assert missing.value.field == "x2"
