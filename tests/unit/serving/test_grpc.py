"""The gRPC transport in-process: codec, status table, and the servicer over a real data plane (no sockets)."""

from __future__ import annotations

import inspect
import struct
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression

from shipyard import errors
from shipyard.config import Settings
from shipyard.protocol.grpc import codec
from shipyard.protocol.grpc import inference_pb2 as pb
from shipyard.registry import Registry
from shipyard.serving.grpc.errors import error_metadata, status_for
from shipyard.serving.grpc.service import InferenceServicer
from shipyard.serving.server import Server, build_server, started
from shipyard.types import InferenceRequest, InferenceResponse, Tensor

pytestmark = pytest.mark.anyio

X = pd.DataFrame({"x1": [0.0, 1.0, 2.0, 3.0, 4.0, 5.0], "x2": [5.0, 4.0, 0.0, 1.0, 3.0, 2.0]})
Y = (X["x1"] > X["x2"]).astype(int)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# -- status table -----------------------------------------------------------------------


def test_every_shipyard_error_has_a_status_and_the_common_ones_are_right() -> None:
    classes = [c for _, c in inspect.getmembers(errors, inspect.isclass) if issubclass(c, errors.ShipyardError)]
    assert all(isinstance(status_for(c.__new__(c)), grpc.StatusCode) for c in classes)
    expected = {
        errors.InvalidInput: grpc.StatusCode.INVALID_ARGUMENT,
        errors.UnsupportedMediaType: grpc.StatusCode.INVALID_ARGUMENT,
        errors.PayloadTooLarge: grpc.StatusCode.RESOURCE_EXHAUSTED,
        errors.ModelNotFound: grpc.StatusCode.NOT_FOUND,
        errors.ModelNotServed: grpc.StatusCode.NOT_FOUND,
        errors.IdenticalVersion: grpc.StatusCode.ALREADY_EXISTS,
        errors.ModelNotReady: grpc.StatusCode.UNAVAILABLE,
        errors.InferenceError: grpc.StatusCode.INTERNAL,
        errors.ShipyardError: grpc.StatusCode.INTERNAL,
        errors.JobNotFound: grpc.StatusCode.NOT_FOUND,
        errors.BrokerError: grpc.StatusCode.UNAVAILABLE,
        errors.RequestTimeout: grpc.StatusCode.DEADLINE_EXCEEDED,
        errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
        errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    }
    for cls, code in expected.items():
        exc = cls.__new__(cls)
        assert status_for(exc) == code, cls


def test_error_metadata_names_the_field_the_class_and_when_to_retry() -> None:
    md = dict(error_metadata(errors.InvalidInput("bad", field="x1"), "rid-1"))
    assert md == {"x-request-id": "rid-1", "shipyard-error-kind": "invalid_input",
                  "shipyard-error-type": "InvalidInput", "shipyard-error-field": "x1"}
    md = dict(error_metadata(errors.ModelNotReady("loading"), "rid-2"))
    assert md["retry-after"] == "1" and md["shipyard-error-kind"] == "unavailable"
    md = dict(error_metadata(errors.Overloaded("m", 4, retry_after=2.5), "rid-3"))
    assert (md["retry-after"], md["shipyard-error-type"]) == ("2.5", "Overloaded")
    md = dict(error_metadata(errors.JobNotFound("j1"), "rid-4"))
    assert md == {"x-request-id": "rid-4", "shipyard-error-kind": "not_found", "shipyard-error-type": "JobNotFound"}


# -- codec ------------------------------------------------------------------------------------


def request_of(**arrays: Any) -> InferenceRequest:
    return InferenceRequest([Tensor(k, np.asarray(v)) for k, v in arrays.items()], id="r1", outputs=["predict"],
                            parameters={"flag": True, "n": 3, "ratio": 0.5, "name": "x"})


def test_raw_request_round_trips_every_datatype() -> None:
    sent = request_of(
        f64=np.array([1.5, -2.0]), f32=np.array([[1.0, 2.0]], dtype=np.float32), f16=np.array([0.5], dtype=np.float16),
        i8=np.array([-3, 4], dtype=np.int8), u64=np.array([2**63 + 1], dtype=np.uint64),
        b=np.array([True, False]), s=np.array(["é", "b"], dtype=object), raw=np.array([b"\xff\x00"], dtype=object),
    )
    got = codec.decode_request(codec.encode_request(sent, "m", "2"))
    assert got.id == "r1" and got.outputs == ["predict"] and got.parameters == sent.parameters
    for a, b in zip(sent.inputs, got.inputs, strict=True):
        assert (a.name, a.datatype, a.data.shape) == (b.name, b.datatype, b.data.shape)
        np.testing.assert_array_equal(a.data, b.data)


def typed_request(datatype: str, field: str, values: list[Any], shape: list[int] | None = None) -> pb.ModelInferRequest:
    msg = pb.ModelInferRequest(model_name="m")
    t = msg.inputs.add(name="x", datatype=datatype, shape=shape or [len(values)])
    getattr(t.contents, field).extend(values)
    return msg


@pytest.mark.parametrize(
    ("datatype", "field", "values", "dtype"),
    [
        ("FP64", "fp64_contents", [1.5, float("nan")], np.float64),
        ("FP32", "fp32_contents", [1.5, 2.0], np.float32),
        ("INT8", "int_contents", [-128, 127], np.int8),
        ("INT64", "int64_contents", [2**62, -1], np.int64),
        ("UINT32", "uint_contents", [0, 2**32 - 1], np.uint32),
        ("BOOL", "bool_contents", [True, False], np.bool_),
        ("BYTES", "bytes_contents", [b"text", b"\xff"], object),
    ],
)
def test_typed_contents_decode_to_the_datatype(datatype: str, field: str, values: list[Any], dtype: Any) -> None:
    (tensor,) = codec.decode_request(typed_request(datatype, field, values)).inputs
    assert tensor.data.dtype == np.dtype(dtype) and tensor.datatype == datatype
    if datatype == "BYTES":
        assert tensor.data.tolist() == ["text", b"\xff"]  # UTF-8 becomes text, other bytes stay bytes
    else:
        np.testing.assert_array_equal(tensor.data, np.array(values, dtype=dtype))


@pytest.mark.parametrize(
    ("msg", "message"),
    [
        (typed_request("FP64", "fp32_contents", [1.0]),
         "input 'x': datatype FP64 carries its values in contents.fp64_contents, got contents.fp32_contents"),
        (typed_request("FP16", "fp32_contents", [1.0]), "input 'x': FP16 has no typed contents field"),
        (typed_request("INT8", "int_contents", [300]), "expected values within INT8 range (-128..127), got 300"),
        (typed_request("FP64", "fp64_contents", [1.0, 2.0], [3]), "input 'x': expected 3 values for its shape"),
        (typed_request("INT64", "int64_contents", [1, 2], [3]), "input 'x': expected 3 values for its shape"),
        (typed_request("DOUBLE", "fp64_contents", [1.0]), "input 'x': unknown datatype 'DOUBLE'"),
        (typed_request("FP64", "fp64_contents", [1.0], [-1]), "needs a 'shape' list of non-negative integers"),
        (pb.ModelInferRequest(model_name="m"), "inference request needs a non-empty 'inputs' list"),
    ],
)
def test_bad_typed_contents_are_refused_naming_the_input(msg: pb.ModelInferRequest, message: str) -> None:
    with pytest.raises(errors.InvalidInput) as info:
        codec.decode_request(msg)
    assert message in info.value.message


def test_raw_and_typed_contents_are_not_mixed_and_raw_entries_match_inputs() -> None:
    msg = codec.encode_request(request_of(a=[1.0], b=[2.0]), "m")
    msg.inputs[0].contents.fp64_contents.append(1.0)
    with pytest.raises(errors.InvalidInput, match="input 'a' has typed contents but the request also sends raw"):
        codec.decode_request(msg)
    msg = codec.encode_request(request_of(a=[1.0], b=[2.0]), "m")
    del msg.raw_input_contents[1]
    with pytest.raises(errors.InvalidInput, match="raw_input_contents has 1 entries but the request has 2 inputs"):
        codec.decode_request(msg)


@pytest.mark.parametrize("raw", [True, False], ids=["raw", "typed"])
def test_response_round_trips_raw_or_typed(raw: bool) -> None:
    sent = InferenceResponse("m", "3", [Tensor("p", np.array([[1, 2], [3, 4]])), Tensor("s", np.array(["a", "b"]))],
                             id="r9", parameters={"k": "v"})
    msg = codec.encode_response(sent, raw=raw)
    assert bool(msg.raw_output_contents) == raw
    got = codec.decode_response(msg)
    assert (got.model_name, got.model_version, got.id, got.parameters) == ("m", "3", "r9", {"k": "v"})
    np.testing.assert_array_equal(got.outputs[0].data, sent.outputs[0].data)
    assert got.outputs[1].data.tolist() == ["a", "b"]


def test_fp16_outputs_force_raw_contents() -> None:
    sent = InferenceResponse("m", "1", [Tensor("p", np.array([0.5], dtype=np.float16))])
    assert codec.encode_response(sent, raw=False).raw_output_contents


def test_metadata_round_trips() -> None:
    meta = {"name": "m", "versions": ["2"], "platform": "shipyard_sklearn",
            "inputs": [{"name": "x1", "datatype": "FP64", "shape": [-1]}],
            "outputs": [{"name": "predict", "datatype": "INT64", "shape": [-1]}],
            "parameters": {"signature_format": "columns"}}
    assert codec.metadata_dict(codec.metadata_message(meta)) == meta


# -- the servicer over a real data plane ------------------------------------------------------


class Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str, trailing: tuple[tuple[str, str], ...]) -> None:
        super().__init__(details)
        self.code, self.details, self.trailing = code, details, dict(trailing)


class FakeContext:
    """The parts of grpc.aio.ServicerContext the servicer uses."""

    def __init__(self, metadata: tuple[tuple[str, str], ...] = ()) -> None:
        self.metadata = metadata
        self.trailing: dict[str, str] = {}

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self.metadata

    def set_trailing_metadata(self, md: tuple[tuple[str, str], ...]) -> None:
        self.trailing = dict(md)

    async def abort(self, code: grpc.StatusCode, details: str, trailing_metadata: Any = ()) -> None:
        raise Aborted(code, details, trailing_metadata)


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Settings, Registry, LogisticRegression]]:
    settings = Settings(home=tmp_path_factory.mktemp("grpc") / "home", workers=1, alias_refresh_seconds=0)
    registry = Registry.from_settings(settings)
    try:
        model = LogisticRegression().fit(X, Y)
        registry.register(model, "m", sample=X.head(3), alias="champion")
        yield settings, registry, model
    finally:
        registry.close()


@pytest.fixture
async def servicer(shared: tuple[Settings, Registry, LogisticRegression]) -> AsyncIterator[InferenceServicer]:
    settings, registry, _ = shared
    server: Server = build_server(settings, ["m"], registry=registry)
    async with started(server):
        yield InferenceServicer(server.dataplane)


def infer_request(rows: pd.DataFrame, model: str = "m") -> pb.ModelInferRequest:
    return codec.encode_request(InferenceRequest([Tensor(c, rows[c].to_numpy()) for c in rows.columns]), model)


async def test_model_infer_answers_like_the_model_under_the_callers_request_id(
    servicer: InferenceServicer, shared: tuple[Settings, Registry, LogisticRegression]
) -> None:
    ctx = FakeContext(metadata=(("x-request-id", "rid-7"),))
    response = await servicer.ModelInfer(infer_request(X), ctx)
    np.testing.assert_array_equal(codec.decode_response(response).outputs[0].data, shared[2].predict(X))
    assert response.id == "rid-7" and response.model_version == "1" and ctx.trailing["x-request-id"] == "rid-7"


async def test_errors_abort_with_the_mapped_status_and_metadata(servicer: InferenceServicer) -> None:
    with pytest.raises(Aborted) as info:
        await servicer.ModelInfer(infer_request(X[["x1"]]), FakeContext())
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "missing input 'x2'" in info.value.details and info.value.trailing["shipyard-error-field"] == "x2"
    with pytest.raises(Aborted) as info:  # the model is resolved first: unknown wins over empty inputs
        await servicer.ModelInfer(pb.ModelInferRequest(model_name="other"), FakeContext())
    assert info.value.code == grpc.StatusCode.NOT_FOUND and "not served here" in info.value.details
    with pytest.raises(Aborted) as info:
        await servicer.ModelReady(pb.ModelReadyRequest(name="m", version="9"), FakeContext())
    assert info.value.code == grpc.StatusCode.NOT_FOUND and "has no version 9" in info.value.details


async def test_health_and_metadata_calls(servicer: InferenceServicer) -> None:
    ctx = FakeContext()
    assert (await servicer.ServerLive(pb.ServerLiveRequest(), ctx)).live
    assert (await servicer.ServerReady(pb.ServerReadyRequest(), ctx)).ready
    assert (await servicer.ModelReady(pb.ModelReadyRequest(name="m@champion"), ctx)).ready
    meta = await servicer.ModelMetadata(pb.ModelMetadataRequest(name="m", version="1"), ctx)
    assert [i.name for i in meta.inputs] == ["x1", "x2"] and list(meta.versions) == ["1"]
    assert (await servicer.ServerMetadata(pb.ServerMetadataRequest(), ctx)).name == "shipyard"


async def test_stream_answers_in_order_and_a_bad_request_does_not_end_it(
    servicer: InferenceServicer, shared: tuple[Settings, Registry, LogisticRegression]
) -> None:
    good = [infer_request(X.iloc[i : i + 2]) for i in range(0, 6, 2)]
    for i, msg in enumerate(good):
        msg.id = f"s{i}"
    bad = infer_request(X[["x1"]])
    bad.id = "bad"

    async def requests() -> AsyncIterator[pb.ModelInferRequest]:
        for msg in [good[0], bad, good[1], good[2]]:
            yield msg

    answers = [a async for a in servicer.ModelStreamInfer(requests(), FakeContext())]
    assert [a.infer_response.id for a in answers] == ["s0", "bad", "s1", "s2"]
    assert "missing input 'x2'" in answers[1].error_message
    for answer, i in zip([answers[0], answers[2], answers[3]], range(0, 6, 2), strict=True):
        assert not answer.error_message
        predicted = codec.decode_response(answer.infer_response).outputs[0].data
        np.testing.assert_array_equal(predicted, shared[2].predict(X.iloc[i : i + 2]))


def test_bytes_elements_layout_matches_the_binary_extension() -> None:
    msg = codec.encode_request(InferenceRequest([Tensor("s", np.array(["ab", "c"], dtype=object))]), "m")
    assert msg.raw_input_contents[0] == struct.pack("<I", 2) + b"ab" + struct.pack("<I", 1) + b"c"


# -- reply form: raw by default, typed on request ----------------------------------------------


def typed_infer_request(rows: pd.DataFrame, **params: Any) -> pb.ModelInferRequest:
    msg = pb.ModelInferRequest(model_name="m")
    for c in rows.columns:
        msg.inputs.add(name=c, datatype="FP64", shape=[len(rows)]).contents.fp64_contents.extend(rows[c].tolist())
    codec.fill_params(msg.parameters, params)
    return msg


async def test_a_typed_request_gets_a_raw_reply_unless_it_asks_for_typed_contents(
    servicer: InferenceServicer, shared: tuple[Settings, Registry, LogisticRegression]
) -> None:
    expected = shared[2].predict(X).tolist()
    raw = await servicer.ModelInfer(typed_infer_request(X), FakeContext())
    assert len(raw.raw_output_contents) == 1 and not raw.outputs[0].HasField("contents")
    assert np.frombuffer(raw.raw_output_contents[0], dtype="<i8").tolist() == expected  # what as_numpy reads
    typed = await servicer.ModelInfer(typed_infer_request(X, typed_output_contents=True), FakeContext())
    assert not typed.raw_output_contents and list(typed.outputs[0].contents.int64_contents) == expected
    for reply in (raw, typed):  # shipyard's own client reads both
        assert codec.decode_response(reply).outputs[0].data.tolist() == expected
    with pytest.raises(Aborted) as info:
        await servicer.ModelInfer(typed_infer_request(X, typed_output_contents="yes"), FakeContext())
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "request parameter 'typed_output_contents' must be true or false, got 'yes'" in info.value.details


# -- Triton's extensions: config, statistics, repository index -----------------------------------


async def test_model_config_is_derived_from_the_signature(servicer: InferenceServicer) -> None:
    config = (await servicer.ModelConfig(pb.ModelConfigRequest(name="m@champion"), FakeContext())).config
    assert (config.name, config.platform, config.backend) == ("m@champion", "shipyard_sklearn", "shipyard")
    assert config.max_batch_size == 2**31 - 1 and list(config.version_policy.specific.versions) == [1]
    assert [(i.name, i.data_type, list(i.dims), i.HasField("reshape"), list(i.reshape.shape))
            for i in config.input] == [("x1", pb.TYPE_FP64, [1], True, []), ("x2", pb.TYPE_FP64, [1], True, [])]
    assert [(o.name, o.data_type, list(o.dims)) for o in config.output] == [("predict", pb.TYPE_INT64, [1])]
    assert len(config.parameters["digest"].string_value) == 64
    with pytest.raises(Aborted) as info:
        await servicer.ModelConfig(pb.ModelConfigRequest(name="m", version="9"), FakeContext())
    assert info.value.code == grpc.StatusCode.NOT_FOUND


async def test_statistics_count_successes_rows_failures_and_model_calls(servicer: InferenceServicer) -> None:
    ctx = FakeContext()
    await servicer.ModelInfer(infer_request(X), ctx)
    await servicer.ModelInfer(infer_request(X.head(2)), ctx)
    with pytest.raises(Aborted):
        await servicer.ModelInfer(infer_request(X[["x1"]]), ctx)  # resolved, then refused: a failure
    with pytest.raises(Aborted):
        await servicer.ModelInfer(infer_request(X, model="nope"), ctx)  # names no version: not counted
    (stats,) = (await servicer.ModelStatistics(pb.ModelStatisticsRequest(name="m"), ctx)).model_stats
    assert (stats.name, stats.version) == ("m", "1")
    assert (stats.inference_count, stats.execution_count) == (len(X) + 2, 2)
    s = stats.inference_stats
    assert (s.success.count, s.fail.count, s.compute_infer.count, s.queue.count) == (2, 1, 2, 2)
    assert s.success.ns >= s.compute_infer.ns > 0 and s.fail.ns > 0
    assert stats.last_inference > 0
    assert sorted((b.batch_size, b.compute_infer.count) for b in stats.batch_stats) == [(2, 1), (len(X), 1)]
    everything = await servicer.ModelStatistics(pb.ModelStatisticsRequest(), ctx)
    assert [(m.name, m.version) for m in everything.model_stats] == [("m", "1")]
    one = await servicer.ModelStatistics(pb.ModelStatisticsRequest(name="m", version="1"), ctx)
    assert one.model_stats[0].inference_count == len(X) + 2
    with pytest.raises(Aborted) as info:
        await servicer.ModelStatistics(pb.ModelStatisticsRequest(name="m", version="9"), ctx)
    assert info.value.code == grpc.StatusCode.NOT_FOUND


async def test_repository_index_lists_registered_versions_and_which_are_loaded(tmp_path: Any) -> None:
    settings = Settings(home=tmp_path / "home", workers=1, alias_refresh_seconds=0)
    registry = Registry.from_settings(settings)
    try:
        model = LogisticRegression().fit(X, Y)
        registry.register(model, "m", sample=X.head(3), alias="champion")
        registry.register(LogisticRegression(C=0.5).fit(X, Y), "m", sample=X.head(3))  # registered, not loaded
        server = build_server(settings, ["m@champion"], registry=registry)
        async with started(server):
            servicer = InferenceServicer(server.dataplane)
            index = await servicer.RepositoryIndex(pb.RepositoryIndexRequest(), FakeContext())
            ready = await servicer.RepositoryIndex(pb.RepositoryIndexRequest(ready=True), FakeContext())
    finally:
        registry.close()
    assert [(m.name, m.version, m.state) for m in index.models] == [("m", "1", "READY"), ("m", "2", "UNAVAILABLE")]
    assert "the first request for it loads it" in index.models[1].reason
    assert [(m.name, m.version) for m in ready.models] == [("m", "1")]
