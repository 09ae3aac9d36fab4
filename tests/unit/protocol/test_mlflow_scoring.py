"""MLflow's scoring formats decode to the same columns as the simple JSON API; refusals name the field."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pytest

from shipyard.errors import InvalidInput, UnsupportedMediaType
from shipyard.protocol import mlflow_scoring
from shipyard.signature import Signature, TensorSpec
from shipyard.types import InferenceResponse, Tensor

COLUMNS = Signature(
    inputs=(TensorSpec("age", "INT64", (-1,)), TensorSpec("income", "FP64", (-1,))),
    outputs=(TensorSpec("predict", "INT64", (-1,)),),
    format="columns",
)
ONE_TENSOR = Signature(inputs=(TensorSpec("pixels", "FP32", (-1, 3)),), format="tensors")
EXPECTED = {"age": [30, 40], "income": [1.5, 2.5]}


def decode(body: Any, content_type: str = "application/json", signature: Signature = COLUMNS) -> dict[str, Any]:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    req = mlflow_scoring.decode_request(raw, content_type, signature)
    return {t.name: np.asarray(t.data).tolist() for t in req.inputs}


@pytest.mark.parametrize("doc", [
    {"dataframe_split": {"columns": ["age", "income"], "data": [[30, 1.5], [40, 2.5]], "index": [0, 1]}},
    {"dataframe_split": {"data": [[30, 1.5], [40, 2.5]]}},  # no columns: the signature's order
    {"dataframe_records": [{"age": 30, "income": 1.5}, {"age": 40, "income": 2.5}]},
    {"instances": [{"age": 30, "income": 1.5}, {"age": 40, "income": 2.5}]},
    {"inputs": {"age": [30, 40], "income": [1.5, 2.5]}},
    {"inputs": [[30, 1.5], [40, 2.5]]},
    {"inputs": {"age": [30, 40], "income": [1.5, 2.5]}, "params": {}},
])
def test_every_json_format_gives_the_same_columns(doc: dict[str, Any]) -> None:
    assert decode(doc) == EXPECTED


def test_csv_is_read_by_the_signature_types() -> None:
    assert decode(b"age,income\r\n30,1.5\r\n40,2.5\r\n", "text/csv") == EXPECTED
    assert decode(b"age,income\n30,1.5\n40,2.5", "text/csv; charset=utf-8") == EXPECTED
    with pytest.raises(InvalidInput, match="input 'age' in the CSV body: expected a INT64 value") as info:
        decode(b"age,income\nold,1.5\n", "text/csv")
    assert info.value.field == "age"
    with pytest.raises(InvalidInput, match="CSV row 1 has 1 values but the header has 2"):
        decode(b"age,income\n30\n", "text/csv")


def test_bad_csv_is_a_400_not_a_500() -> None:  # found by schemathesis: csv.Error escaped as a 500
    with pytest.raises(InvalidInput, match="CSV body is not valid CSV") as info:
        decode(b"age,income\n" + b"3" * 200_000 + b",1.5\n", "text/csv")  # past the csv module's field limit
    assert info.value.field == "body"
    # what schemathesis sent: a bare carriage return inside a field
    assert decode(b"age,income\r30,1.5\r40,2.5\r", "text/csv") == EXPECTED
    with pytest.raises(InvalidInput, match="CSV body is not UTF-8"):
        decode(b"age,income\n\xff,1\n", "text/csv")


def test_one_tensor_inputs_are_that_tensor() -> None:
    assert decode({"inputs": [[1, 2, 3]]}, signature=ONE_TENSOR) == {"pixels": [[1.0, 2.0, 3.0]]}


@pytest.mark.parametrize(("doc", "field", "message"), [
    ({"dataframe_records": [], "instances": []}, "body", "exactly one of dataframe_split"),
    ({}, "body", "got an empty object"),
    ({"inputs": {"age": [1]}, "extra": 1}, "body", "got extra, inputs"),
    ([1, 2], "body", "body must be a JSON object"),
    ({"inputs": {"age": [1], "income": [1.0]}, "params": {"k": 1}}, "params", "params are not supported"),
    ({"dataframe_split": {"columns": ["age"], "data": [[1, 2]]}}, "dataframe_split", "row 0 has 2 values"),
    ({"dataframe_split": [[1, 2]]}, "dataframe_split", "must be an object with 'data'"),
    ({"dataframe_records": "x"}, "dataframe_records", "must be a non-empty list of rows"),
    ({"dataframe_records": [1, 2]}, "dataframe_records", "instance 0 is a int"),
])
def test_refusals_name_mlflows_field(doc: Any, field: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=message) as info:
        decode(doc)
    assert info.value.field == field


@pytest.mark.parametrize(("content_type", "message"), [
    ("application/xml", "send application/json or text/csv"),
    ("application/json; charset=latin-1", "charset 'latin-1' is not supported; send UTF-8"),
    ("application/json; format=pandas-split", "parameter 'format' is not supported"),
])
def test_content_types_other_than_mlflows_are_415(content_type: str, message: str) -> None:
    with pytest.raises(UnsupportedMediaType, match=message):
        decode({"inputs": EXPECTED}, content_type)


def test_too_deep_is_refused_like_everywhere() -> None:
    with pytest.raises(InvalidInput, match="more than 128 levels deep"):
        decode(b'{"instances":' + b"[" * 500 + b"]" * 500 + b"}")


def test_the_response_is_predictions() -> None:
    one = InferenceResponse("m", "1", [Tensor("predict", np.array([1, 0]))])
    assert mlflow_scoring.encode_response(one) == {"predictions": [1, 0]}
    two = InferenceResponse("m", "1", [Tensor("label", np.array([1])), Tensor("score", np.array([0.5]))])
    assert mlflow_scoring.encode_response(two) == {"predictions": [{"label": 1, "score": 0.5}]}
