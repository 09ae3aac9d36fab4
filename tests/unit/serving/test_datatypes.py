"""The datatype rule on every transport, in-process: a declared tensor datatype that widens to the
input's without loss is accepted, a narrowing one is refused naming the input and both datatypes
(REST JSON, REST binary extension, gRPC raw and typed contents alike); ``convert_datatypes``
converts instead; JSON numbers of the simple API and GraphQL have no width and take the input's."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import grpc
import httpx
import numpy as np
import orjson
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression

from shipyard import errors
from shipyard.config import Settings
from shipyard.protocol.grpc import codec
from shipyard.protocol.grpc import inference_pb2 as pb
from shipyard.registry import Registry
from shipyard.serving.grpc.service import InferenceServicer
from shipyard.serving.server import build_server, started
from shipyard.signature import WIDENS_TO, Signature, TensorSpec, check_declared_datatypes
from shipyard.types import numpy_dtype

pytestmark = pytest.mark.anyio

# whole numbers: every datatype below holds them exactly, so accepted requests predict alike
X = pd.DataFrame({"x1": [0.0, 1.0, 2.0, 3.0, 4.0, 5.0], "x2": [5.0, 4.0, 0.0, 1.0, 3.0, 2.0]})
Y = (X["x1"] > X["x2"]).astype(int)
NARROWING = "input 'x1': expected FP32 (or FP16, INT8, INT16, UINT8, UINT16, which widen to it without loss), got FP64"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# -- the rule itself ------------------------------------------------------------------------


def test_every_widening_holds_each_value_of_the_narrower_datatype_exactly() -> None:
    for wide, narrower in WIDENS_TO.items():
        w = numpy_dtype(wide)
        for name in narrower:
            n = numpy_dtype(name)
            extremes = (np.finfo(n).min, np.finfo(n).max) if n.kind == "f" else (np.iinfo(n).min, np.iinfo(n).max)
            values = np.array(extremes, dtype=n)
            assert np.array_equal(values.astype(w).astype(n), values), (name, wide)
            if n.kind in "iu" and w.kind == "f":  # every integer of the type, not just the ends
                assert np.iinfo(n).max < 2 ** (np.finfo(w).nmant + 1), (name, wide)


@pytest.mark.parametrize(
    ("want", "sent", "ok"),
    [
        ("FP64", "FP32", True), ("FP64", "INT32", True), ("INT64", "INT8", True), ("INT64", "UINT32", True),
        ("FP32", "FP64", False), ("FP64", "INT64", False), ("INT64", "FP64", False), ("INT32", "INT64", False),
        ("UINT8", "INT8", False), ("FP16", "FP32", False),
        ("FP64", "BYTES", True), ("BOOL", "INT64", True),  # left to validate, which names the value
    ],
)
def test_check_declared_datatypes(want: str, sent: str, ok: bool) -> None:
    sig = Signature(inputs=(TensorSpec("a", want, (-1,)),), format="columns")
    if ok:
        check_declared_datatypes(sig, {"a": sent, "not-an-input": "FP64"})
        return
    with pytest.raises(errors.InvalidInput) as info:
        check_declared_datatypes(sig, {"a": sent}, hint="do this")
    assert info.value.message.startswith(f"input 'a': expected {want}")
    assert info.value.message.endswith(f"got {sent}; do this")
    assert (info.value.field, info.value.got) == ("a", sent)


# -- every transport --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Settings, Registry, LogisticRegression]]:
    """f64 takes FP64 columns, f32 the same model on FP32 columns."""
    settings = Settings(home=tmp_path_factory.mktemp("datatypes") / "home", workers=1, alias_refresh_seconds=0)
    registry = Registry.from_settings(settings)
    try:
        model = LogisticRegression().fit(X, Y)
        registry.register(model, "f64", sample=X.head(3))
        registry.register(model, "f32", sample=X.head(3).astype(np.float32))
        yield settings, registry, model
    finally:
        registry.close()


class Refused(Exception):
    pass


class Context:
    """The parts of grpc.aio.ServicerContext the servicer uses."""

    def invocation_metadata(self) -> tuple[()]:
        return ()

    def set_trailing_metadata(self, md: Any) -> None:
        pass

    async def abort(self, code: grpc.StatusCode, details: str, trailing_metadata: Any = ()) -> None:
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        raise Refused(details)


Send = Callable[[str, str, dict[str, Any]], Awaitable[list[int]]]


@pytest.fixture
async def transports(shared: tuple[Settings, Registry, LogisticRegression]) -> AsyncIterator[dict[str, Send]]:
    """send(model, datatype, parameters) per transport: the predictions, or Refused with the message."""
    settings, registry, _ = shared
    server = build_server(settings, ["f64", "f32"], registry=registry)
    servicer = InferenceServicer(server.dataplane)
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=server.app), base_url="http://shipyard.test")

    def columns(datatype: str) -> list[tuple[str, np.ndarray[Any, Any]]]:
        return [(c, X[c].to_numpy().astype(numpy_dtype(datatype))) for c in X.columns]

    async def rest(response: Awaitable[httpx.Response]) -> list[int]:
        r = await response
        if r.status_code == 400:
            raise Refused(r.json()["error"])
        assert r.status_code == 200, r.text
        return r.json()["outputs"][0]["data"]  # type: ignore[no-any-return]

    async def rest_json(model: str, datatype: str, params: dict[str, Any]) -> list[int]:
        inputs = [{"name": c, "datatype": datatype, "shape": [len(a)], "data": a.tolist()}
                  for c, a in columns(datatype)]
        return await rest(http.post(f"/v2/models/{model}/infer", json={"inputs": inputs, "parameters": params}))

    async def rest_binary(model: str, datatype: str, params: dict[str, Any]) -> list[int]:
        cols = columns(datatype)
        inputs = [{"name": c, "datatype": datatype, "shape": [len(a)], "parameters": {"binary_data_size": a.nbytes}}
                  for c, a in cols]
        header = orjson.dumps({"inputs": inputs, "parameters": params})
        body = header + b"".join(a.tobytes() for _, a in cols)
        headers = {"Inference-Header-Content-Length": str(len(header)), "Content-Type": "application/octet-stream"}
        return await rest(http.post(f"/v2/models/{model}/infer", content=body, headers=headers))

    async def grpc_call(msg: pb.ModelInferRequest, params: dict[str, Any]) -> list[int]:
        codec.fill_params(msg.parameters, params)
        response = await servicer.ModelInfer(msg, Context())
        return codec.decode_response(response).outputs[0].data.tolist()  # type: ignore[no-any-return]

    async def grpc_raw(model: str, datatype: str, params: dict[str, Any]) -> list[int]:
        msg = pb.ModelInferRequest(model_name=model)
        for c, a in columns(datatype):
            msg.inputs.add(name=c, datatype=datatype, shape=[len(a)])
            msg.raw_input_contents.append(a.tobytes())
        return await grpc_call(msg, params)

    async def grpc_typed(model: str, datatype: str, params: dict[str, Any]) -> list[int]:
        msg = pb.ModelInferRequest(model_name=model)
        for c, a in columns(datatype):
            t = msg.inputs.add(name=c, datatype=datatype, shape=[len(a)])
            getattr(t.contents, codec.CONTENTS_FIELD[datatype]).extend(a.tolist())
        return await grpc_call(msg, params)

    async with started(server), http:
        yield {"rest-json": rest_json, "rest-binary": rest_binary, "grpc-raw": grpc_raw, "grpc-typed": grpc_typed}


TRANSPORTS = ["rest-json", "rest-binary", "grpc-raw", "grpc-typed"]


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize(("model", "datatype"), [("f64", "FP64"), ("f64", "FP32"), ("f64", "INT32"), ("f32", "INT16")])
async def test_the_inputs_datatype_and_lossless_widenings_are_accepted(
    transports: dict[str, Send], shared: Any, transport: str, model: str, datatype: str
) -> None:
    assert await transports[transport](model, datatype, {}) == shared[2].predict(X).tolist()


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize(
    ("model", "datatype", "message"),
    [
        ("f32", "FP64", NARROWING),
        ("f64", "INT64", "input 'x1': expected FP64 (or FP32, FP16, INT8, INT16, INT32, UINT8, UINT16, UINT32, "
                         "which widen to it without loss), got INT64"),
    ],
)
async def test_a_narrowing_datatype_is_refused_naming_the_input_and_both_datatypes(
    transports: dict[str, Send], transport: str, model: str, datatype: str, message: str
) -> None:
    with pytest.raises(Refused) as info:
        await transports[transport](model, datatype, {})
    assert str(info.value) == f"{message}; send that datatype, or set the request parameter convert_datatypes=true " \
                              "to have values converted when they fit"


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_convert_datatypes_converts_values_that_fit(
    transports: dict[str, Send], shared: Any, transport: str
) -> None:
    send = transports[transport]
    assert await send("f32", "FP64", {"convert_datatypes": True}) == shared[2].predict(X).tolist()
    assert await send("f64", "INT64", {"convert_datatypes": True}) == shared[2].predict(X).tolist()
    with pytest.raises(Refused, match="request parameter 'convert_datatypes' must be true or false, got 'yes'"):
        await send("f32", "FP64", {"convert_datatypes": "yes"})


async def test_json_numbers_of_the_simple_api_and_graphql_take_the_inputs_datatype(
    shared: tuple[Settings, Registry, LogisticRegression],
) -> None:
    settings, registry, model = shared
    server = build_server(settings, ["f64", "f32"], registry=registry)
    records = [{"x1": int(a), "x2": float(b)} for a, b in zip(X["x1"], X["x2"], strict=True)]  # ints and floats
    query = "query($m: String!, $r: JSON!) { predict(model: $m, records: $r) { predictions } }"
    transport = httpx.ASGITransport(app=server.app)
    async with started(server), httpx.AsyncClient(transport=transport, base_url="http://shipyard.test") as c:
        for name in ("f64", "f32"):
            v1 = await c.post(f"/v1/models/{name}:predict", json={"instances": records})
            assert v1.json()["predictions"] == model.predict(X).tolist(), v1.text
            gql = await c.post("/graphql", json={"query": query, "variables": {"m": name, "r": records}})
            assert gql.json()["data"]["predict"]["predictions"] == model.predict(X).tolist(), gql.text

