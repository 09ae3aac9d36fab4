"""The Open Inference Protocol v2 REST codec: JSON tensors, the binary extension, errors."""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import orjson
import pytest

from shipyard.errors import InvalidInput
from shipyard.protocol import oip
from shipyard.types import InferenceRequest, InferenceResponse, Tensor

NUMERIC = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64"]
NUMPY = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
}


def sample(datatype: str, shape: tuple[int, ...] = (2, 3)) -> np.ndarray[Any, Any]:
    """Values that use the datatype's range: extremes for integers, fractions for floats."""
    n = int(np.prod(shape))
    dtype = np.dtype(NUMPY[datatype])
    if datatype == "BOOL":
        values = np.arange(n) % 2 == 0
    elif dtype.kind in ("i", "u"):
        info = np.iinfo(dtype)
        values = np.array([info.min, info.max, *range(n - 2)], dtype=dtype)
    else:
        values = (np.arange(n) - 2.5).astype(dtype) / 4
    return values.astype(dtype).reshape(shape)


def json_body(*inputs: dict[str, Any], **extra: Any) -> bytes:
    return orjson.dumps({"inputs": list(inputs), **extra})


def binary_body(tensors: dict[str, tuple[str, Any, bytes]], **extra: Any) -> tuple[bytes, int]:
    """A request as tritonclient sends it: JSON header, then each input's raw bytes in order."""
    inputs = [
        {"name": name, "datatype": dt, "shape": list(shape), "parameters": {"binary_data_size": len(raw)}}
        for name, (dt, shape, raw) in tensors.items()
    ]
    header = orjson.dumps({"inputs": inputs, **extra})
    return header + b"".join(raw for _, _, raw in tensors.values()), len(header)


def bytes_elements(*items: bytes) -> bytes:
    """BYTES in the binary extension: each element is a 4-byte little-endian length, then the bytes."""
    return b"".join(struct.pack("<I", len(b)) + b for b in items)


def decode_error(body: bytes, header_length: int | None = None) -> InvalidInput:
    with pytest.raises(InvalidInput) as info:
        oip.decode_request(body, header_length)
    return info.value


def split_response(body: bytes, header_length: int | None) -> dict[str, np.ndarray[Any, Any] | list[Any]]:
    """Outputs of an encoded response, reading binary outputs from after the JSON header."""
    head = orjson.loads(body if header_length is None else body[:header_length])
    offset = header_length or 0
    out: dict[str, Any] = {}
    for o in head["outputs"]:
        size = (o.get("parameters") or {}).get("binary_data_size")
        if size is None:
            out[o["name"]] = o["data"]
        else:
            out[o["name"]] = body[offset : offset + size]
            offset += size
    assert offset == len(body)
    return out


# -- JSON tensors --------------------------------------------------------------------


def test_json_tensor_decodes_flat_and_nested_data_to_the_same_array() -> None:
    flat = oip.decode_request(
        json_body({"name": "x", "datatype": "FP32", "shape": [2, 3], "data": [1, 2, 3, 4, 5, 6]}), None
    )
    nested = oip.decode_request(
        json_body({"name": "x", "datatype": "FP32", "shape": [2, 3], "data": [[1, 2, 3], [4, 5, 6]]}), None
    )
    for req in (flat, nested):
        (t,) = req.inputs
        assert t.name == "x" and t.datatype == "FP32"
        assert t.data.dtype == np.float32 and t.data.shape == (2, 3)
        np.testing.assert_array_equal(t.data, [[1, 2, 3], [4, 5, 6]])


@pytest.mark.parametrize("datatype", NUMERIC)
def test_json_tensor_of_every_numeric_datatype_keeps_its_values(datatype: str) -> None:
    arr = sample(datatype)
    body = json_body({"name": "x", "datatype": datatype, "shape": [2, 3], "data": arr.reshape(-1).tolist()})
    (t,) = oip.decode_request(body, None).inputs
    assert t.data.dtype == arr.dtype
    np.testing.assert_array_equal(t.data, arr)


def test_json_bytes_tensor_holds_strings() -> None:
    body = json_body({"name": "s", "datatype": "BYTES", "shape": [2], "data": ["héllo", ""]})
    (t,) = oip.decode_request(body, None).inputs
    assert t.data.dtype == object and t.data.tolist() == ["héllo", ""]


def test_datatype_names_are_case_insensitive() -> None:
    (t,) = oip.decode_request(json_body({"name": "x", "datatype": "fp64", "shape": [1], "data": [1]}), None).inputs
    assert t.datatype == "FP64" and t.data.dtype == np.float64


def test_integral_floats_are_accepted_for_integer_datatypes() -> None:
    body = json_body({"name": "x", "datatype": "INT64", "shape": [2], "data": [3.0, 9007199254740993]})
    (t,) = oip.decode_request(body, None).inputs
    assert t.data.dtype == np.int64 and t.data.tolist() == [3, 9007199254740993]  # no float64 round trip


def test_request_id_parameters_and_requested_outputs_are_kept() -> None:
    body = json_body(
        {"name": "x", "datatype": "INT32", "shape": [1], "data": [1]},
        id="req-7",
        parameters={"binary_data_output": True},
        outputs=[{"name": "a"}, {"name": "b", "parameters": {"binary_data": False}}],
    )
    req = oip.decode_request(body, None)
    assert req.id == "req-7"
    assert req.parameters == {"binary_data_output": True}
    assert req.outputs == ["a", "b"]
    assert req.output_parameters == {"a": {}, "b": {"binary_data": False}}


# -- binary tensors ------------------------------------------------------------------


@pytest.mark.parametrize("datatype", NUMERIC)
def test_binary_tensor_of_every_numeric_datatype_round_trips(datatype: str) -> None:
    arr = sample(datatype)
    raw = arr.astype(arr.dtype.newbyteorder("<")).tobytes()
    body, header_len = binary_body({"x": (datatype, arr.shape, raw)})
    req = oip.decode_request(body, header_len)
    (t,) = req.inputs
    assert t.datatype == datatype and t.data.dtype == arr.dtype
    np.testing.assert_array_equal(t.data, arr)

    response = InferenceResponse("m", "1", [Tensor("y", t.data, datatype)])
    out_body, out_len = oip.encode_response(response, InferenceRequest([], parameters={"binary_data_output": True}))
    assert out_len is not None
    assert split_response(out_body, out_len) == {"y": raw}


def test_binary_bytes_tensor_uses_four_byte_little_endian_lengths() -> None:
    raw = bytes_elements(b"hello", b"", "héllo".encode(), b"\xff\xfe")
    assert raw[:4] == b"\x05\x00\x00\x00"
    body, header_len = binary_body({"s": ("BYTES", (4,), raw)})
    (t,) = oip.decode_request(body, header_len).inputs
    # UTF-8 elements become str; anything else stays bytes
    assert t.data.tolist() == ["hello", "", "héllo", b"\xff\xfe"]

    response = InferenceResponse("m", "1", [Tensor("s", t.data, "BYTES")])
    out_body, out_len = oip.encode_response(response, InferenceRequest([], parameters={"binary_data_output": True}))
    assert split_response(out_body, out_len) == {"s": raw}


def test_binary_and_json_inputs_mix_in_one_request() -> None:
    raw = np.array([1.5, 2.5], dtype="<f8").tobytes()
    header = orjson.dumps(
        {
            "inputs": [
                {"name": "a", "datatype": "FP64", "shape": [2], "data": [1, 2]},
                {"name": "b", "datatype": "FP64", "shape": [2], "parameters": {"binary_data_size": 16}},
            ]
        }
    )
    req = oip.decode_request(header + raw, len(header))
    assert [t.data.tolist() for t in req.inputs] == [[1.0, 2.0], [1.5, 2.5]]


# -- response encoding ---------------------------------------------------------------


def _response() -> InferenceResponse:
    return InferenceResponse(
        "m",
        "3",
        [Tensor("label", np.array([0, 2], dtype=np.int64)), Tensor("proba", np.array([[0.25, 0.75]] * 2))],
        id="r1",
    )


def test_json_response_has_no_header_length_and_carries_names_and_id() -> None:
    body, header_len = oip.encode_response(_response(), InferenceRequest([]))
    assert header_len is None
    doc = orjson.loads(body)
    assert (doc["model_name"], doc["model_version"], doc["id"]) == ("m", "3", "r1")
    assert doc["outputs"] == [
        {"name": "label", "datatype": "INT64", "shape": [2], "data": [0, 2]},
        {"name": "proba", "datatype": "FP64", "shape": [2, 2], "data": [0.25, 0.75, 0.25, 0.75]},
    ]


def test_binary_data_output_parameter_makes_every_output_binary() -> None:
    body, header_len = oip.encode_response(_response(), InferenceRequest([], parameters={"binary_data_output": True}))
    assert header_len is not None and header_len < len(body)
    head = orjson.loads(body[:header_len])
    assert [o["parameters"]["binary_data_size"] for o in head["outputs"]] == [16, 32]
    assert all("data" not in o for o in head["outputs"])
    outs = split_response(body, header_len)
    assert np.frombuffer(outs["label"], "<i8").tolist() == [0, 2]
    assert np.frombuffer(outs["proba"], "<f8").tolist() == [0.25, 0.75, 0.25, 0.75]


def test_per_output_binary_data_overrides_the_request_default() -> None:
    only_label = InferenceRequest([], output_parameters={"label": {"binary_data": True}})
    body, header_len = oip.encode_response(_response(), only_label)
    outs = split_response(body, header_len)
    assert isinstance(outs["label"], bytes) and outs["proba"] == [0.25, 0.75, 0.25, 0.75]

    all_but_proba = InferenceRequest(
        [], parameters={"binary_data_output": True}, output_parameters={"proba": {"binary_data": False}}
    )
    body, header_len = oip.encode_response(_response(), all_but_proba)
    outs = split_response(body, header_len)
    assert isinstance(outs["label"], bytes) and outs["proba"] == [0.25, 0.75, 0.25, 0.75]


def test_json_bytes_output_is_text() -> None:
    response = InferenceResponse("m", "1", [Tensor("s", np.array(["a", b"b"], dtype=object), "BYTES")])
    body, _ = oip.encode_response(response, InferenceRequest([]))
    assert orjson.loads(body)["outputs"][0]["data"] == ["a", "b"]


# -- header length -------------------------------------------------------------------


def test_header_length_absent_means_plain_json() -> None:
    assert oip.parse_header_length(None, 10) is None
    assert oip.parse_header_length("10", 10) == 10


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("abc", "must be a whole number, got 'abc'"),
        ("-1", "is -1 but the body has 10 bytes"),
        ("0", "is 0 but the body has 10 bytes"),
        ("11", "is 11 but the body has 10 bytes"),
    ],
)
def test_bad_header_length_names_the_header(value: str, message: str) -> None:
    with pytest.raises(InvalidInput, match="Inference-Header-Content-Length") as info:
        oip.parse_header_length(value, 10)
    assert message in str(info.value)
    assert info.value.field == "Inference-Header-Content-Length"


# -- decode errors -------------------------------------------------------------------

X = {"name": "x", "datatype": "FP64", "shape": [2], "data": [1.0, 2.0]}


DECODE_ERRORS = [
    ("invalid-json", b"{", "body", "request body is not valid JSON"),
    (
        "nan-literal",
        b'{"inputs": [{"name": "x", "datatype": "FP64", "shape": [1], "data": [NaN]}]}',
        "body",
        "not valid JSON",
    ),
    ("not-an-object", b"[1, 2]", "body", "must be a JSON object, got list"),
    ("no-inputs", b"{}", "inputs", "needs a non-empty 'inputs' list"),
    ("empty-inputs", json_body(), "inputs", "needs a non-empty 'inputs' list"),
    ("inputs-not-a-list", b'{"inputs": {"x": 1}}', "inputs", "needs a non-empty 'inputs' list"),
    ("input-not-an-object", b'{"inputs": [5]}', "inputs[0]", "inputs[0] must be an object, got int"),
    (
        "input-without-name",
        json_body({"datatype": "FP64", "shape": [1], "data": [1]}),
        "inputs[0].name",
        "needs a 'name' string",
    ),
    (
        "input-without-datatype",
        json_body({"name": "x", "shape": [1], "data": [1]}),
        "x",
        "input 'x' needs a 'datatype' string",
    ),
    (
        "unknown-datatype",
        json_body({**X, "datatype": "FLOAT64"}),
        "x",
        "input 'x': unknown datatype 'FLOAT64'; expected one of",
    ),
    ("shape-not-a-list", json_body({**X, "shape": 2}), "x", "input 'x' needs a 'shape' list of non-negative integers"),
    ("negative-dim", json_body({**X, "shape": [-2]}), "x", "needs a 'shape' list of non-negative integers, got [-2]"),
    ("float-dim", json_body({**X, "shape": [2.0]}), "x", "needs a 'shape' list of non-negative integers"),
    ("bool-dim", json_body({**X, "shape": [True, 2]}), "x", "needs a 'shape' list of non-negative integers"),
    ("no-data", json_body({"name": "x", "datatype": "FP64", "shape": [2]}), "x", "input 'x' has no 'data'"),
    ("duplicate-input", json_body(X, X), "x", "input 'x' appears twice"),
    ("input-parameters-not-object", json_body({**X, "parameters": [1]}), "x", "'parameters' must be an object"),
    ("request-parameters-not-object", json_body(X, parameters=[1]), "parameters", "'parameters' must be an object"),
    ("outputs-not-a-list", json_body(X, outputs={"name": "y"}), "outputs", "'outputs' must be a list"),
    ("output-without-name", json_body(X, outputs=[{"nom": "y"}]), "outputs[0]", "outputs[0] needs a 'name' string"),
    (
        "output-parameters-not-object",
        json_body(X, outputs=[{"name": "y", "parameters": 3}]),
        "outputs[0]",
        "must be an object",
    ),
    ("string-first", json_body({**X, "data": ["a", 1.0]}), "x", "expected numbers for datatype FP64, got string 'a'"),
    ("string-later", json_body({**X, "data": [1.0, "a"]}), "x", "expected numbers for datatype FP64, got string 'a'"),
    ("bool-among-floats", json_body({**X, "data": [True, 1.0]}), "x", "expected numbers for datatype FP64, got true"),
    ("null", json_body({**X, "data": [1.0, None]}), "x", "expected numbers for datatype FP64, got null"),
    ("object", json_body({**X, "data": [1.0, {"v": 2}]}), "x", "expected numbers for datatype FP64, got an object"),
    ("count-mismatch", json_body({**X, "data": [1.0, 2.0, 3.0]}), "x", "expected 2 values for its shape, got 3 values"),
    ("ragged", json_body({**X, "shape": [3], "data": [[1, 2], [3]]}), "x", "expected a rectangular array, got ragged"),
    (
        "int-in-bool",
        json_body({**X, "datatype": "BOOL", "data": [True, 0]}),
        "x",
        "expected true/false for datatype BOOL, got int 0",
    ),
    (
        "fraction-in-int",
        json_body({**X, "datatype": "INT32", "data": [1, 2.5]}),
        "x",
        "integers for datatype INT32, got fractional number 2.5",
    ),
    (
        "int8-overflow",
        json_body({**X, "datatype": "INT8", "data": [1, 300]}),
        "x",
        "values within INT8 range (-128..127), got 300",
    ),
    (
        "uint8-negative",
        json_body({**X, "datatype": "UINT8", "data": [1, -1]}),
        "x",
        "values within UINT8 range (0..255), got -1",
    ),
    ("int64-overflow", json_body({**X, "datatype": "INT64", "data": [1, 2**63]}), "x", "values within INT64 range"),
    (
        "fp16-overflow",
        json_body({**X, "datatype": "FP16", "data": [1, 1e6]}),
        "x",
        "values within FP16 range, got 1000000.0",
    ),
    (
        "int-in-bytes",
        json_body({**X, "datatype": "BYTES", "data": ["a", 1]}),
        "x",
        "expected strings for datatype BYTES, got int 1",
    ),
    (
        "null-in-bytes",
        json_body({**X, "datatype": "BYTES", "data": ["a", None]}),
        "x",
        "expected strings for datatype BYTES, got null",
    ),
]


@pytest.mark.parametrize(
    ("body", "field", "message"), [c[1:] for c in DECODE_ERRORS], ids=[c[0] for c in DECODE_ERRORS]
)
def test_json_decode_errors_name_the_field(body: bytes, field: str, message: str) -> None:
    err = decode_error(body)
    assert err.field == field
    assert message in err.message


FP64x2 = np.array([1.0, 2.0], dtype="<f8").tobytes()


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (
            lambda: binary_body({"x": ("FP64", (4,), FP64x2)}),
            "input 'x' binary data: expected 32 bytes of FP64 for its shape, got 16 bytes",
        ),
        (
            lambda: binary_body({"x": ("FP64", (2,), FP64x2[:12])}),
            "expected 16 bytes of FP64 for its shape, got 12 bytes",
        ),
        (
            lambda: binary_body({"x": ("BYTES", (1,), b"\x05\x00\x00\x00abc")}),
            "input 'x': BYTES element of 5 bytes is truncated",
        ),
        (
            lambda: binary_body({"x": ("BYTES", (1,), b"\x05\x00")}),
            "input 'x': truncated BYTES element length at byte 0",
        ),
        (
            lambda: binary_body({"x": ("BYTES", (3,), bytes_elements(b"a", b"b"))}),
            "expected 3 elements for its shape, got 2",
        ),
    ],
    ids=["short-for-shape", "size-not-a-multiple", "bytes-element-cut", "bytes-length-cut", "bytes-count"],
)
def test_binary_payload_errors_name_the_input(build: Any, message: str) -> None:
    body, header_len = build()
    err = decode_error(body, header_len)
    assert err.field == "x"
    assert message in err.message


def test_binary_data_size_beyond_the_body_is_refused() -> None:
    body, header_len = binary_body({"x": ("FP64", (2,), FP64x2)})
    err = decode_error(body[:-4], header_len)
    assert err.field == "x"
    assert "declares binary_data_size 16 but only 12 bytes remain in the body" in err.message


def test_unclaimed_binary_bytes_are_refused() -> None:
    body, header_len = binary_body({"x": ("FP64", (2,), FP64x2)})
    err = decode_error(body + b"\x00" * 8, header_len)
    assert "8 bytes of binary data follow the inputs but no input claims them" in err.message


@pytest.mark.parametrize("size", [-1, "16", True, 1.5])
def test_binary_data_size_must_be_a_non_negative_integer(size: Any) -> None:
    header = orjson.dumps(
        {"inputs": [{"name": "x", "datatype": "FP64", "shape": [2], "parameters": {"binary_data_size": size}}]}
    )
    err = decode_error(header + FP64x2, len(header))
    assert err.field == "x" and "binary_data_size must be a non-negative integer" in err.message


def test_data_and_binary_data_size_together_are_refused() -> None:
    header = orjson.dumps(
        {
            "inputs": [
                {"name": "x", "datatype": "FP64", "shape": [2], "data": [1, 2], "parameters": {"binary_data_size": 16}}
            ]
        }
    )
    err = decode_error(header + FP64x2, len(header))
    assert "has both 'data' and binary_data_size" in err.message


def test_header_cut_inside_the_json_is_reported_as_the_header() -> None:
    body, header_len = binary_body({"x": ("FP64", (2,), FP64x2)})
    err = decode_error(body, header_len - 3)
    assert "inference request header is not valid JSON" in err.message
