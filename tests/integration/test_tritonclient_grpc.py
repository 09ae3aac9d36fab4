"""The official Triton gRPC client (tritonclient.grpc) against a real `shipyard serve --grpc-port`.

tritonclient brings its own copy of the protocol's .proto, so these tests also show
that shipyard's independently written one matches it on the wire. Raw contents are
what tritonclient sends; typed contents go through its generated stub.
"""

from __future__ import annotations

import queue
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import numpy as np
import pandas as pd
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from shipyard.demo import FEATURES, train_demo_model
from shipyard.protocol.grpc import inference_pb2 as pb
from shipyard.protocol.grpc import inference_pb2_grpc as pb_grpc
from shipyard.testing import RunningServer

pytestmark = pytest.mark.integration

# Which model a request names: by name (the server's default, demo@champion), by alias, by version.
TARGETS = [("demo", ""), ("demo@champion", ""), ("demo", "1")]
TARGET_IDS = ["name", "alias", "version"]


@pytest.fixture(scope="module")
def triton(grpc_demo_server: RunningServer) -> Iterator[grpcclient.InferenceServerClient]:
    client = grpcclient.InferenceServerClient(url=grpc_demo_server.grpc_target)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture(scope="module")
def stub(grpc_demo_server: RunningServer) -> Iterator[service_pb2_grpc.GRPCInferenceServiceStub]:
    """tritonclient's own generated stub, for messages its high-level client will not build."""
    with grpc.insecure_channel(grpc_demo_server.grpc_target) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


@pytest.fixture(scope="module")
def reference() -> tuple[Any, pd.DataFrame]:
    model, X, _ = train_demo_model()
    return model, X.iloc[::3]  # 50 rows covering all three species


def infer_inputs(rows: pd.DataFrame) -> list[grpcclient.InferInput]:
    inputs = []
    for name in FEATURES:
        column = rows[name].to_numpy(dtype=np.float64)
        tensor = grpcclient.InferInput(name, list(column.shape), "FP64")
        tensor.set_data_from_numpy(column)
        inputs.append(tensor)
    return inputs


def test_server_health_and_metadata(triton: grpcclient.InferenceServerClient) -> None:
    assert triton.is_server_live()
    assert triton.is_server_ready()
    meta = triton.get_server_metadata(as_json=True)
    assert meta["name"] == "shipyard"
    assert meta["version"]
    assert "model_repository_aliases" in meta["extensions"]


@pytest.mark.parametrize(("model", "version"), TARGETS, ids=TARGET_IDS)
def test_model_metadata_and_readiness(triton: grpcclient.InferenceServerClient, model: str, version: str) -> None:
    meta = triton.get_model_metadata(model, model_version=version, as_json=True)
    assert meta["versions"] == ["1"]
    assert meta["platform"] == "shipyard_sklearn"
    assert [(i["name"], i["datatype"], i["shape"]) for i in meta["inputs"]] == [
        (f, "FP64", ["-1"]) for f in FEATURES  # protobuf's JSON writes int64 as strings
    ]
    assert [(o["name"], o["datatype"]) for o in meta["outputs"]] == [("predict", "INT64")]
    assert triton.is_model_ready(model, model_version=version)


def test_grpc_metadata_equals_rest_metadata(
    grpc_demo_server: RunningServer, stub: service_pb2_grpc.GRPCInferenceServiceStub
) -> None:
    rest = httpx.get(f"{grpc_demo_server.url}/v2/models/demo").json()
    meta = stub.ModelMetadata(service_pb2.ModelMetadataRequest(name="demo"), timeout=10)
    assert meta.name == rest["name"] and list(meta.versions) == rest["versions"]
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [
        (t["name"], t["datatype"], t["shape"]) for t in rest["inputs"]
    ]
    # the protocol's properties (field 6, which Triton's copy of the message lacks) carry REST's parameters
    with grpc.insecure_channel(grpc_demo_server.grpc_target) as channel:
        ours = pb_grpc.GRPCInferenceServiceStub(channel).ModelMetadata(pb.ModelMetadataRequest(name="demo"), timeout=10)
    assert dict(ours.properties) == {k: str(v) for k, v in rest["parameters"].items()}
    assert {"digest", "created_at"} <= set(ours.properties)


def test_unknown_model_version_and_alias_are_not_found(triton: grpcclient.InferenceServerClient) -> None:
    for model, version, message in [
        ("nope", "", "model 'nope' is not served here"),
        ("demo", "7", "model 'demo' has no version 7"),
        ("demo@staging", "", "model 'demo' has no alias 'staging'"),
    ]:
        with pytest.raises(InferenceServerException, match=message) as info:
            triton.get_model_metadata(model, model_version=version)
        assert info.value.status() == "StatusCode.NOT_FOUND"
        with pytest.raises(InferenceServerException, match=message):
            triton.is_model_ready(model, model_version=version)


@pytest.mark.parametrize("explicit_output", [False, True], ids=["all-outputs", "requested-output"])
@pytest.mark.parametrize(("model", "version"), TARGETS, ids=TARGET_IDS)
def test_raw_contents_predict_like_the_model(
    triton: grpcclient.InferenceServerClient,
    reference: tuple[Any, pd.DataFrame],
    model: str,
    version: str,
    explicit_output: bool,
) -> None:
    estimator, rows = reference
    outputs = [grpcclient.InferRequestedOutput("predict")] if explicit_output else None
    result = triton.infer(model, infer_inputs(rows), model_version=version, outputs=outputs, request_id="raw-1")
    predicted = result.as_numpy("predict")
    assert predicted.dtype == np.int64 and predicted.shape == (len(rows),)
    np.testing.assert_array_equal(predicted, estimator.predict(rows))
    response = result.get_response()
    assert response.model_name == "demo" and response.model_version == "1" and response.id == "raw-1"
    assert len(response.raw_output_contents) == 1


def typed_request(rows: pd.DataFrame, **params: bool) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name="demo", id="typed-1")
    for name in FEATURES:
        tensor = request.inputs.add(name=name, datatype="FP64", shape=[len(rows)])
        tensor.contents.fp64_contents.extend(rows[name].tolist())
    for key, value in params.items():
        request.parameters[key].bool_param = value
    return request


def test_typed_contents_get_a_raw_answer_that_as_numpy_reads(
    stub: service_pb2_grpc.GRPCInferenceServiceStub, reference: tuple[Any, pd.DataFrame]
) -> None:
    estimator, rows = reference
    response, call = stub.ModelInfer.with_call(typed_request(rows), timeout=10)
    assert len(response.raw_output_contents) == 1  # as Triton answers: what every client reads
    predicted = grpcclient.InferResult(response).as_numpy("predict")
    assert predicted is not None and predicted.dtype == np.int64
    np.testing.assert_array_equal(predicted, estimator.predict(rows))
    assert response.id == "typed-1"
    assert dict(call.trailing_metadata())["x-request-id"]


def test_typed_output_contents_asks_for_a_typed_answer(
    stub: service_pb2_grpc.GRPCInferenceServiceStub, reference: tuple[Any, pd.DataFrame]
) -> None:
    estimator, rows = reference
    response = stub.ModelInfer(typed_request(rows, typed_output_contents=True), timeout=10)
    assert not response.raw_output_contents
    (out,) = response.outputs
    assert (out.name, out.datatype, list(out.shape)) == ("predict", "INT64", [len(rows)])
    np.testing.assert_array_equal(np.array(out.contents.int64_contents), estimator.predict(rows))


def test_model_config_describes_the_signature_as_triton_does(triton: grpcclient.InferenceServerClient) -> None:
    config = triton.get_model_config("demo", as_json=True)["config"]
    assert config["name"] == "demo" and config["platform"] == "shipyard_sklearn" and config["backend"] == "shipyard"
    assert int(config["max_batch_size"]) > 0  # every tensor has a leading batch dimension
    assert [(i["name"], i["data_type"], i["dims"], i["reshape"]) for i in config["input"]] == [
        (f, "TYPE_FP64", ["1"], {}) for f in FEATURES  # [rows, 1] in, [rows] to the model
    ]
    assert [(o["name"], o["data_type"]) for o in config["output"]] == [("predict", "TYPE_INT64")]
    assert len(config["parameters"]["digest"]["string_value"]) == 64  # what REST metadata's parameters carry
    version = triton.get_model_config("demo", model_version="1").config
    assert list(version.version_policy.specific.versions) == [1]
    with pytest.raises(InferenceServerException, match="model 'demo' has no version 7") as info:
        triton.get_model_config("demo", model_version="7")
    assert info.value.status() == "StatusCode.NOT_FOUND"


def test_repository_index_lists_the_served_version(triton: grpcclient.InferenceServerClient) -> None:
    index = triton.get_model_repository_index().models
    assert [(m.name, m.version, m.state) for m in index] == [("demo", "1", "READY")]


def test_statistics_count_this_clients_requests(
    triton: grpcclient.InferenceServerClient, reference: tuple[Any, pd.DataFrame]
) -> None:
    _, rows = reference
    before = triton.get_inference_statistics("demo", "1").model_stats[0]
    triton.infer("demo", infer_inputs(rows))
    with pytest.raises(InferenceServerException):
        triton.infer("demo", infer_inputs(rows)[:3])
    (after,) = triton.get_inference_statistics("demo", "1").model_stats
    assert (after.name, after.version) == ("demo", "1")
    assert after.inference_count - before.inference_count == len(rows)
    assert after.inference_stats.success.count - before.inference_stats.success.count == 1
    assert after.inference_stats.fail.count - before.inference_stats.fail.count == 1
    assert after.execution_count > before.execution_count and after.last_inference > 0
    everything = triton.get_inference_statistics(as_json=True)["model_stats"]
    assert [(m["name"], m["version"]) for m in everything] == [("demo", "1")]


def test_request_id_metadata_is_kept(stub: service_pb2_grpc.GRPCInferenceServiceStub) -> None:
    request = service_pb2.ModelInferRequest(model_name="demo")
    for name in FEATURES:
        request.inputs.add(name=name, datatype="FP64", shape=[1]).contents.fp64_contents.append(1.0)
    response, call = stub.ModelInfer.with_call(request, metadata=[("x-request-id", "abc-123")], timeout=10)
    assert response.id == "abc-123"  # as REST: the id of the call is the response id when the body has none
    assert dict(call.trailing_metadata())["x-request-id"] == "abc-123"


def test_stream_answers_every_request_in_order_and_survives_a_bad_one(
    triton: grpcclient.InferenceServerClient, reference: tuple[Any, pd.DataFrame]
) -> None:
    estimator, rows = reference
    chunks = [rows.iloc[i : i + 10] for i in range(0, len(rows), 10)]
    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    triton.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        for i, chunk in enumerate(chunks):
            triton.async_stream_infer("demo", infer_inputs(chunk), request_id=f"s-{i}")
            if i == 1:  # a bad request mid-stream: answered with an error, the stream goes on
                triton.async_stream_infer("demo", infer_inputs(chunk)[:3], request_id="s-bad")
        received = [answers.get(timeout=30) for _ in range(len(chunks) + 1)]
    finally:
        triton.stop_stream()
    errors = [e for r, e in received if e is not None]
    assert len(errors) == 1 and "missing input 'petal_width'" in str(errors[0])
    results = [r for r, e in received if e is None]
    assert [r.get_response().id for r in results] == [f"s-{i}" for i in range(len(chunks))]
    for result, chunk in zip(results, chunks, strict=True):
        np.testing.assert_array_equal(result.as_numpy("predict"), estimator.predict(chunk))


def test_bad_input_raises_an_exception_naming_the_field(
    triton: grpcclient.InferenceServerClient, reference: tuple[Any, pd.DataFrame]
) -> None:
    _, rows = reference
    with pytest.raises(InferenceServerException, match="missing input 'petal_width'") as info:
        triton.infer("demo", infer_inputs(rows)[:3])
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT"

    with_nan = rows.copy()
    with_nan.iloc[2, 0] = np.nan
    with pytest.raises(InferenceServerException, match="input 'sepal_length': expected finite numbers, got nan"):
        triton.infer("demo", infer_inputs(with_nan))

    odd = grpcclient.InferInput("sepal_width", [len(rows)], "BYTES")
    odd.set_data_from_numpy(np.array([b"wide"] * len(rows), dtype=object))
    inputs = [odd if i.name() == "sepal_width" else i for i in infer_inputs(rows)]
    with pytest.raises(InferenceServerException, match="input 'sepal_width': expected FP64, got str 'wide'"):
        triton.infer("demo", inputs)

    with pytest.raises(InferenceServerException, match="unknown output 'proba'"):
        triton.infer("demo", infer_inputs(rows), outputs=[grpcclient.InferRequestedOutput("proba")])

    with pytest.raises(InferenceServerException, match="model 'demo' has no alias 'staging'") as info:
        triton.infer("demo@staging", infer_inputs(rows))
    assert info.value.status() == "StatusCode.NOT_FOUND"
