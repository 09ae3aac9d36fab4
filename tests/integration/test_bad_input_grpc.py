"""Malformed gRPC requests against a real `shipyard serve --grpc-port`: the REST table's cases, in gRPC terms.

Each row is (id, rpc, request, expected status code, a substring of the status message). The
requests are built with tritonclient.grpc's own generated messages, so shipyard is held to a
third party's reading of the protocol. Cases with no gRPC counterpart (content types, JSON
syntax, gzip, routes) are left out; ones gRPC adds (typed contents in the wrong field, raw
and typed contents together) are in.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from shipyard.demo import FEATURES, train_demo_model
from shipyard.protocol.status import STATUSES
from shipyard.testing import RunningServer

pytestmark = pytest.mark.integration

LIMIT = 65536  # the server's --max-body-bytes, also its largest gRPC message
ROWS = [[5.1, 3.5, 1.4, 0.2], [6.3, 3.3, 6.0, 2.5], [5.8, 2.7, 4.1, 1.0]]
COLUMNS = {f: [r[i] for r in ROWS] for i, f in enumerate(FEATURES)}
INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND


def fp64(*values: float) -> bytes:
    return np.array(values, dtype="<f8").tobytes()


def bytes_elements(*items: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(b)) + b for b in items)


def raw(
    model: str = "demo",
    version: str = "",
    drop: tuple[str, ...] = (),
    add: tuple[tuple[str, str, list[int], bytes], ...] = (),
    outputs: tuple[str, ...] = (),
    **replace: tuple[str, list[int], bytes],
) -> pb.ModelInferRequest:
    """The good three-row request with raw contents (as tritonclient sends it), edited by name."""
    msg = pb.ModelInferRequest(model_name=model, model_version=version)
    tensors = [(f, *replace.get(f, ("FP64", [3], fp64(*COLUMNS[f])))) for f in FEATURES if f not in drop]
    for name, datatype, shape, blob in [*tensors, *add]:
        msg.inputs.add(name=name, datatype=datatype, shape=shape)
        msg.raw_input_contents.append(blob)
    for name in outputs:
        msg.outputs.add(name=name)
    return msg


def typed(**replace: tuple[str, list[int], str, list[Any]]) -> pb.ModelInferRequest:
    """The good three-row request with typed contents; replace maps an input to (datatype, shape, field, values)."""
    msg = pb.ModelInferRequest(model_name="demo")
    for f in FEATURES:
        datatype, shape, field, values = replace.get(f, ("FP64", [3], "fp64_contents", COLUMNS[f]))
        tensor = msg.inputs.add(name=f, datatype=datatype, shape=shape)
        getattr(tensor.contents, field).extend(values)
    return msg


def both_raw_and_typed() -> pb.ModelInferRequest:
    msg = raw()
    msg.inputs[1].contents.fp64_contents.extend(COLUMNS[FEATURES[1]])
    return msg


def unnamed_output() -> pb.ModelInferRequest:
    msg = raw()
    msg.outputs.add(name="")
    return msg


GOOD = raw()

# fmt: off
CASES: list[tuple[str, str, Any, grpc.StatusCode, str]] = [
    # -- wrong types --------------------------------------------------------------------
    ("typed-bool-tensor-for-fp64-column", "ModelInfer",
     typed(petal_length=("BOOL", [3], "bool_contents", [True, False, True])), INVALID,
     "input 'petal_length': expected FP64[-1], got BOOL[3]"),
    ("typed-values-in-another-field", "ModelInfer",
     typed(sepal_length=("FP64", [3], "fp32_contents", [5.1, 6.3, 5.8])), INVALID,
     "input 'sepal_length': datatype FP64 carries its values in contents.fp64_contents, got contents.fp32_contents"),
    ("typed-int8-out-of-range", "ModelInfer", typed(sepal_width=("INT8", [3], "int_contents", [3, 300, 2])), INVALID,
     "input 'sepal_width': expected values within INT8 range (-128..127), got 300"),
    # -- missing and extra inputs -----------------------------------------------------------
    ("missing-input", "ModelInfer", raw(drop=("petal_width",)), INVALID,
     "missing input 'petal_width': expected FP64[-1]"),
    ("extra-input", "ModelInfer", raw(add=(("colour", "FP64", [3], fp64(1, 2, 3)),)), INVALID,
     "unexpected input 'colour': this model takes 'sepal_length', 'sepal_width', 'petal_length', 'petal_width'"),
    ("duplicate-input", "ModelInfer", raw(add=(("sepal_length", "FP64", [3], fp64(1, 2, 3)),)), INVALID,
     "input 'sepal_length' appears twice"),
    ("no-inputs", "ModelInfer", pb.ModelInferRequest(model_name="demo"), INVALID,
     "inference request needs a non-empty 'inputs' list"),
    ("input-without-name", "ModelInfer", raw(add=(("", "FP64", [3], fp64(1, 2, 3)),)), INVALID,
     "inputs[4] needs a 'name' string"),
    # -- shapes ----------------------------------------------------------------------------------
    ("typed-shape-vs-value-count", "ModelInfer",
     typed(sepal_length=("FP64", [4], "fp64_contents", COLUMNS["sepal_length"])), INVALID,
     "input 'sepal_length': expected 4 values for its shape, got 3 values"),
    ("2d-where-1d-expected", "ModelInfer", raw(sepal_width=("FP64", [3, 2], fp64(3.5, 3.3, 2.7, 3.0, 3.1, 2.9))),
     INVALID, "input 'sepal_width': expected shape [-1], got shape [3, 2]"),
    ("negative-dimension", "ModelInfer", raw(sepal_width=("FP64", [-3], b"")), INVALID,
     "input 'sepal_width' needs a 'shape' list of non-negative integers, got [-3]"),
    ("different-row-counts", "ModelInfer", raw(petal_length=("FP64", [2], fp64(1.4, 6.0))), INVALID,
     "input 'petal_length' has 2 rows but 'sepal_length' has 3"),
    ("zero-rows", "ModelInfer", raw(**{f: ("FP64", [0], b"") for f in FEATURES}), INVALID,
     "input 'sepal_length': expected at least one row, got 0 rows"),
    # -- NaN and infinity -------------------------------------------------------------------------
    ("raw-nan", "ModelInfer", raw(sepal_length=("FP64", [3], fp64(5.1, math.nan, 5.8))), INVALID,
     "input 'sepal_length': expected finite numbers, got nan at position 1"),
    ("raw-infinity", "ModelInfer", raw(petal_width=("FP64", [3], fp64(-math.inf, 2.5, 1.0))), INVALID,
     "input 'petal_width': expected finite numbers, got -inf at position 0"),
    ("typed-nan", "ModelInfer", typed(sepal_width=("FP64", [3], "fp64_contents", [3.5, 3.3, math.nan])), INVALID,
     "input 'sepal_width': expected finite numbers, got nan at position 2"),
    # -- truncated or inconsistent raw contents ---------------------------------------------------
    ("raw-size-wrong-for-shape", "ModelInfer", raw(sepal_width=("FP64", [3], fp64(3.5, 3.3, 2.7)[:20])), INVALID,
     "input 'sepal_width' binary data: expected 24 bytes of FP64 for its shape, got 20 bytes"),
    ("raw-entries-fewer-than-inputs", "ModelInfer",
     pb.ModelInferRequest(model_name="demo", inputs=raw().inputs, raw_input_contents=raw().raw_input_contents[:3]),
     INVALID, "raw_input_contents has 3 entries but the request has 4 inputs"),
    ("raw-and-typed-together", "ModelInfer", both_raw_and_typed(), INVALID,
     "input 'sepal_width' has typed contents but the request also sends raw_input_contents"),
    ("raw-bytes-element-truncated", "ModelInfer",
     raw(petal_length=("BYTES", [3], bytes_elements(b"1.4", b"6", b"x")[:-1])), INVALID,
     "input 'petal_length': BYTES element of 1 bytes is truncated"),
    # -- datatypes -----------------------------------------------------------------------------------
    ("unknown-datatype", "ModelInfer", raw(sepal_length=("FLOAT64", [3], fp64(*COLUMNS["sepal_length"]))), INVALID,
     "input 'sepal_length': unknown datatype 'FLOAT64'; expected one of BOOL, UINT8"),
    ("raw-bytes-for-fp64", "ModelInfer", raw(petal_length=("BYTES", [3], bytes_elements(b"1.4", b"6", b"x"))),
     INVALID, "input 'petal_length': expected FP64, got str '1.4' at position 0"),
    ("typed-bytes-for-fp64", "ModelInfer",
     typed(sepal_width=("BYTES", [3], "bytes_contents", [b"3.5", b"3.3", b"2.7"])), INVALID,
     "input 'sepal_width': expected FP64, got str '3.5' at position 0"),
    ("typed-fp16", "ModelInfer", typed(sepal_width=("FP16", [3], "fp32_contents", [3.5, 3.3, 2.7])), INVALID,
     "input 'sepal_width': FP16 has no typed contents field; send it in raw_input_contents"),
    # -- outputs ---------------------------------------------------------------------------------------
    ("unknown-output", "ModelInfer", raw(outputs=("probability",)), INVALID,
     "unknown output 'probability'; this model returns predict"),
    ("output-without-name", "ModelInfer", unnamed_output(), INVALID, "outputs[0] needs a 'name' string"),
    # -- size limit ---------------------------------------------------------------------------------------
    ("too-large", "ModelInfer", raw(sepal_length=("FP64", [LIMIT // 8 + 1], fp64(*[1.0] * (LIMIT // 8 + 1)))),
     grpc.StatusCode.RESOURCE_EXHAUSTED, "larger than max"),
    # -- unknown models, versions, aliases; bad names -----------------------------------------------------
    ("unknown-model", "ModelInfer", raw(model="nope"), NOT_FOUND, "model 'nope' is not served here"),
    ("unknown-model-wins-over-bad-tensors", "ModelInfer", pb.ModelInferRequest(model_name="nope"), NOT_FOUND,
     "model 'nope' is not served here"),
    ("unknown-model-metadata", "ModelMetadata", pb.ModelMetadataRequest(name="nope"), NOT_FOUND,
     "model 'nope' is not served here"),
    ("unknown-version", "ModelInfer", raw(version="7"), NOT_FOUND, "model 'demo' has no version 7"),
    ("non-numeric-version", "ModelInfer", raw(version="latest"), NOT_FOUND, "model 'demo' has no version latest"),
    ("unknown-version-ready", "ModelReady", pb.ModelReadyRequest(name="demo", version="7"), NOT_FOUND,
     "model 'demo' has no version 7"),
    ("unknown-alias", "ModelInfer", raw(model="demo@staging"), NOT_FOUND, "model 'demo' has no alias 'staging'"),
    ("alias-and-version", "ModelInfer", raw(model="demo@champion", version="1"), INVALID,
     "'demo@champion' already names a version"),
    ("invalid-model-name", "ModelInfer", raw(model="de mo"), INVALID,
     "invalid model name 'de mo': use letters, digits"),
    ("empty-model-name", "ModelMetadata", pb.ModelMetadataRequest(name=""), INVALID, "invalid model name ''"),
]
# fmt: on


@pytest.fixture(scope="module")
def stub(grpc_demo_server: RunningServer) -> Iterator[service_pb2_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(grpc_demo_server.grpc_target) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


def call(stub: service_pb2_grpc.GRPCInferenceServiceStub, rpc: str, request: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        getattr(stub, rpc)(request, timeout=30)
    error: grpc.RpcError = info.value
    return error


def test_the_table_covers_the_rest_table_and_both_error_codes() -> None:
    assert len(CASES) >= 30
    assert len({c[0] for c in CASES}) == len(CASES), "case ids must be unique"
    assert {c[3] for c in CASES} == {INVALID, NOT_FOUND, grpc.StatusCode.RESOURCE_EXHAUSTED}


@pytest.mark.parametrize(("rpc", "request_", "code", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_malformed_request_gets_the_right_status_and_a_useful_message(
    stub: service_pb2_grpc.GRPCInferenceServiceStub, rpc: str, request_: Any, code: grpc.StatusCode, message: str
) -> None:
    error = call(stub, rpc, request_)
    assert error.code() == code, error.details()
    assert message in error.details()
    if code != grpc.StatusCode.RESOURCE_EXHAUSTED:  # that one is refused by gRPC itself, before shipyard
        trailing = dict(error.trailing_metadata())
        assert trailing["x-request-id"], "every failure carries a request id"
        assert trailing["shipyard-error-type"]
        assert STATUSES[trailing["shipyard-error-kind"]].grpc == code.name


def test_invalid_input_names_its_field_in_trailing_metadata(stub: service_pb2_grpc.GRPCInferenceServiceStub) -> None:
    error = call(stub, "ModelInfer", raw(drop=("petal_width",)))
    trailing = dict(error.trailing_metadata())
    assert trailing["shipyard-error-field"] == "petal_width"
    assert trailing["shipyard-error-type"] == "InvalidInput"
    assert trailing["shipyard-error-kind"] == "invalid_input"


def test_server_still_answers_correctly_after_every_malformed_request(
    grpc_demo_server: RunningServer, stub: service_pb2_grpc.GRPCInferenceServiceStub
) -> None:
    for _, rpc, request, code, _ in CASES:
        assert call(stub, rpc, request).code() == code
    model, X, _ = train_demo_model()
    rows = X.iloc[::5]
    msg = pb.ModelInferRequest(model_name="demo")
    for f in FEATURES:
        msg.inputs.add(name=f, datatype="FP64", shape=[len(rows)])
        msg.raw_input_contents.append(fp64(*rows[f]))
    response = stub.ModelInfer(msg, timeout=30)
    np.testing.assert_array_equal(np.frombuffer(response.raw_output_contents[0], "<i8"), model.predict(rows))
    assert grpc_demo_server.process.poll() is None, grpc_demo_server.log()
