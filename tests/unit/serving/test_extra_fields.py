"""Records that carry more than the features, in-process: /v1 predict, GraphQL, jobs, and OIP's strict contract.

Three versions of one model differ only in ``extra_fields``: ``refusing`` (the
default), ``ignoring`` and ``passing`` (passthrough). A server may override the
policy (``Settings.extra_fields``); the Open Inference Protocol (REST ``/v2``
and gRPC) refuses an unknown tensor whatever the policy says.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import grpc
import httpx
import numpy as np
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
MODELS = ["refusing", "ignoring", "passing"]
HINT = "(set extra_fields to 'ignore' or 'passthrough' to accept other fields)"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Settings, Registry, LogisticRegression]]:
    settings = Settings(home=tmp_path_factory.mktemp("extra") / "home", workers=1, alias_refresh_seconds=0)
    registry = Registry.from_settings(settings)
    try:
        model = LogisticRegression().fit(X, Y)
        registry.register(model, "refusing", sample=X.head(3))
        registry.register(model, "ignoring", sample=X.head(3), extra_fields="ignore")
        registry.register(model, "passing", sample=X.head(3), extra_fields="passthrough")
        yield settings, registry, model
    finally:
        registry.close()


@asynccontextmanager
async def serving(
    shared: tuple[Settings, Registry, Any], **changes: Any
) -> AsyncIterator[tuple[Server, httpx.AsyncClient]]:
    settings, registry, _ = shared
    server = build_server(settings.replace(**changes), MODELS, registry=registry)
    transport = httpx.ASGITransport(app=server.app)
    async with started(server), httpx.AsyncClient(transport=transport, base_url="http://shipyard.test") as c:
        yield server, c


@pytest.fixture
async def client(shared: tuple[Settings, Registry, Any]) -> AsyncIterator[httpx.AsyncClient]:
    async with serving(shared) as (_, c):
        yield c


def records(**extra: list[Any]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = X.to_dict(orient="records")
    for name, values in extra.items():
        for row, v in zip(rows, values, strict=True):
            row[name] = v
    return rows


def expected(shared: tuple[Settings, Registry, LogisticRegression]) -> list[int]:
    return shared[2].predict(X).tolist()  # type: ignore[no-any-return]


IDS = [7, 8, 9, 10, 11, 12]


# -- refuse ---------------------------------------------------------------------------


async def test_refuse_answers_400_naming_the_field_and_the_option(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/models/refusing:predict", json={"instances": records(id=IDS)})
    assert r.status_code == 400
    assert r.json()["error"] == f"unexpected input 'id': this model takes 'x1', 'x2' {HINT}"
    assert r.json()["field"] == "id"
    cols = await client.post("/v1/models/refusing:predict", json={"inputs": {**X.to_dict(orient="list"), "id": IDS}})
    assert cols.status_code == 400 and cols.json()["error"].startswith("unexpected input 'id'")
    assert HINT in cols.json()["error"]


async def test_refuse_still_catches_a_typo_and_offers_the_name_it_meant(client: httpx.AsyncClient) -> None:
    rows = [{"x1": 1.0, "x_2": 2.0}]
    r = await client.post("/v1/models/refusing:predict", json={"instances": rows})
    assert r.status_code == 400
    assert "unexpected input 'x_2'" in r.json()["error"] and "did you mean 'x2'?" in r.json()["error"]


async def test_refuse_names_the_option_when_only_one_row_has_the_extra_field(client: httpx.AsyncClient) -> None:
    rows = records()
    rows[3]["note"] = "late"
    r = await client.post("/v1/models/refusing:predict", json={"instances": rows})
    assert r.status_code == 400
    assert r.json()["error"] == f"instance 3 has an extra field 'note': this model takes 'x1', 'x2' {HINT}"


# -- ignore ---------------------------------------------------------------------------


async def test_ignore_drops_extra_fields_of_rows_and_columns(
    client: httpx.AsyncClient, shared: tuple[Settings, Registry, LogisticRegression]
) -> None:
    rows = records(id=IDS)
    rows[0]["meta"] = {"source": "web"}  # rows may differ in what they carry beside the features
    r = await client.post("/v1/models/ignoring:predict", json={"instances": rows})
    assert r.status_code == 200, r.text
    assert r.json()["predictions"] == expected(shared) and "passthrough" not in r.json()
    cols = await client.post("/v1/models/ignoring:predict",
                             json={"inputs": {**X.to_dict(orient="list"), "id": IDS, "batch": "b-1"}})
    assert cols.status_code == 200, cols.text
    assert cols.json()["predictions"] == expected(shared)


async def test_ignore_still_refuses_a_row_without_a_feature(client: httpx.AsyncClient) -> None:
    rows = records(id=IDS)
    del rows[1]["x2"]
    r = await client.post("/v1/models/ignoring:predict", json={"instances": rows})
    assert r.status_code == 400 and "instance 1 lacks 'x2'" in r.json()["error"]


# -- passthrough ------------------------------------------------------------------------


async def test_passthrough_returns_each_rows_extra_fields_beside_unchanged_predictions(
    client: httpx.AsyncClient, shared: tuple[Settings, Registry, LogisticRegression]
) -> None:
    rows = records(id=IDS)
    rows[2]["meta"] = {"source": "web", "tags": ["a"]}
    del rows[4]["id"]
    r = await client.post("/v1/models/passing:predict", json={"instances": rows, "id": "req-1"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["predictions"] == expected(shared) and body["id"] == "req-1"
    assert body["passthrough"] == [
        {"id": 7}, {"id": 8}, {"id": 9, "meta": {"source": "web", "tags": ["a"]}}, {"id": 10}, {}, {"id": 12}
    ]


async def test_passthrough_keeps_the_fast_path_answer_and_gives_empty_objects_without_extras(
    client: httpx.AsyncClient, shared: tuple[Settings, Registry, LogisticRegression]
) -> None:
    r = await client.post("/v1/models/passing:predict", json={"instances": records()})
    assert r.status_code == 200, r.text
    assert r.json()["predictions"] == expected(shared) and r.json()["passthrough"] == [{}] * len(X)
    plain = await client.post("/v1/models/refusing:predict", json={"instances": records()})
    assert "passthrough" not in plain.json()  # clients of other models see today's shape


async def test_passthrough_of_columns_gives_one_object_per_row(
    client: httpx.AsyncClient, shared: tuple[Settings, Registry, LogisticRegression]
) -> None:
    body = {"inputs": {**X.to_dict(orient="list"), "id": IDS, "region": ["eu"] * 6}}
    r = await client.post("/v1/models/passing:predict", json=body)
    assert r.status_code == 200, r.text
    assert r.json()["predictions"] == expected(shared)
    assert r.json()["passthrough"] == [{"id": i, "region": "eu"} for i in IDS]
    short = await client.post("/v1/models/passing:predict", json={"inputs": {**X.to_dict(orient="list"), "id": [1]}})
    assert short.status_code == 400 and short.json()["field"] == "id"
    assert short.json()["error"] == (
        "extra field 'id': expected a list of 6 values (one per row, as the inputs have), got 1 values"
    )


# -- overrides ----------------------------------------------------------------------------


async def test_the_server_setting_overrides_the_versions_policy(
    shared: tuple[Settings, Registry, LogisticRegression]
) -> None:
    body = {"instances": records(id=IDS)}
    async with serving(shared, extra_fields="passthrough,passing=refuse") as (_, c):
        turned = await c.post("/v1/models/refusing:predict", json=body)
        assert turned.status_code == 200, turned.text
        assert turned.json()["passthrough"] == [{"id": i} for i in IDS]
        assert (await c.post("/v1/models/ignoring:predict", json=body)).json()["passthrough"][0] == {"id": 7}
        refused = await c.post("/v1/models/passing:predict", json=body)
        assert refused.status_code == 400 and HINT in refused.json()["error"]


# -- the Open Inference Protocol keeps its contract -------------------------------------------


def v2_body(**tensors: list[Any]) -> dict[str, Any]:
    columns = {**X.to_dict(orient="list"), **tensors}
    return {"inputs": [{"name": k, "datatype": "FP64", "shape": [len(v)], "data": v} for k, v in columns.items()]}


@pytest.mark.parametrize("model", MODELS)
async def test_oip_rest_refuses_an_unknown_tensor_whatever_the_policy(client: httpx.AsyncClient, model: str) -> None:
    r = await client.post(f"/v2/models/{model}/infer", json=v2_body(id=[float(i) for i in IDS]))
    assert r.status_code == 400
    assert r.json()["error"] == "unexpected input 'id': this model takes 'x1', 'x2'"  # no extra_fields on OIP
    ok = await client.post(f"/v2/models/{model}/infer", json=v2_body())
    assert ok.status_code == 200, ok.text


class _Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code, self.details = code, details


class _Context:
    """The parts of grpc.aio.ServicerContext the servicer uses."""

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return ()

    def set_trailing_metadata(self, md: tuple[tuple[str, str], ...]) -> None:
        pass

    async def abort(self, code: grpc.StatusCode, details: str, trailing_metadata: Any = ()) -> None:
        raise _Aborted(code, details)


async def test_oip_grpc_refuses_an_unknown_tensor_whatever_the_policy(
    shared: tuple[Settings, Registry, LogisticRegression]
) -> None:
    async with serving(shared, extra_fields="passthrough") as (server, _):
        servicer = InferenceServicer(server.dataplane)
        for model in MODELS:
            inputs = [Tensor(c, X[c].to_numpy()) for c in X.columns] + [Tensor("id", np.array(IDS, dtype=np.float64))]
            with pytest.raises(_Aborted) as info:
                await servicer.ModelInfer(codec.encode_request(InferenceRequest(inputs), model), _Context())
            assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
            assert info.value.details == "unexpected input 'id': this model takes 'x1', 'x2'"


# -- GraphQL and asynchronous requests ---------------------------------------------------------

PREDICT = """
query Predict($model: String!, $records: JSON!) {
  predict(model: $model, records: $records) { predictions passthrough }
}"""


async def test_graphql_predict_follows_the_same_policy(
    client: httpx.AsyncClient, shared: tuple[Settings, Registry, LogisticRegression]
) -> None:
    async def gql(model: str) -> dict[str, Any]:
        r = await client.post("/graphql", json={"query": PREDICT, "variables": {"model": model,
                                                                                 "records": records(id=IDS)}})
        assert r.status_code == 200, r.text
        return r.json()  # type: ignore[no-any-return]

    passing = await gql("passing")
    assert passing["data"]["predict"] == {"predictions": expected(shared), "passthrough": [{"id": i} for i in IDS]}
    assert (await gql("ignoring"))["data"]["predict"] == {"predictions": expected(shared), "passthrough": None}
    refused = await gql("refusing")
    assert HINT in refused["errors"][0]["message"]


async def test_an_asynchronous_request_is_refused_at_submission_or_answered_with_its_passthrough(
    client: httpx.AsyncClient, shared: tuple[Settings, Registry, LogisticRegression]
) -> None:
    body = {"instances": records(id=IDS)}
    refused = await client.post("/v1/models/refusing/jobs", json=body)
    assert refused.status_code == 400 and HINT in refused.json()["error"]
    accepted = await client.post("/v1/models/passing/jobs", json=body)
    assert accepted.status_code == 202, accepted.text
    one = await client.post("/v1/models/passing/jobs", json={**records()[0], "id": 99})  # a bare record
    async with asyncio.timeout(30):
        done = []
        for job in (accepted.json(), one.json()):
            while (view := (await client.get(job["url"])).json())["status"] == "queued":
                await asyncio.sleep(0.02)
            done.append(view)
    assert done[0]["status"] == "done", done[0]
    assert done[0]["result"]["predictions"] == expected(shared)
    assert done[0]["result"]["passthrough"] == [{"id": i} for i in IDS]
    assert done[1]["result"]["prediction"] == expected(shared)[0] and done[1]["result"]["passthrough"] == {"id": 99}
