"""The simple JSON API codec: records and columns in, predictions out."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pytest

from shipyard.errors import InvalidInput
from shipyard.protocol import simple
from shipyard.signature import Signature, TensorSpec
from shipyard.types import InferenceResponse, Tensor

COLUMNS = Signature(
    inputs=(TensorSpec("age", "INT64", (-1,)), TensorSpec("income", "FP64", (-1,))),
    outputs=(TensorSpec("predict", "INT64", (-1,)),),
    format="columns",
)
ONE_TENSOR = Signature(inputs=(TensorSpec("pixels", "FP32", (-1, 3)),), format="tensors")


def decode(doc: Any, signature: Signature = COLUMNS) -> dict[str, np.ndarray[Any, Any]]:
    req = simple.decode_request(orjson.dumps(doc), signature)
    return {t.name: t.data for t in req.inputs}


def decode_error(doc: Any, signature: Signature = COLUMNS) -> InvalidInput:
    raw = doc if isinstance(doc, bytes) else orjson.dumps(doc)
    with pytest.raises(InvalidInput) as info:
        simple.decode_request(raw, signature)
    return info.value


def validate_error(doc: Any, signature: Signature = COLUMNS) -> InvalidInput:
    """Decoding succeeds but the signature refuses: what the server does next."""
    with pytest.raises(InvalidInput) as info:
        signature.validate(decode(doc, signature))
    return info.value


def test_records_become_columns() -> None:
    arrays = decode({"instances": [{"age": 30, "income": 1.5}, {"age": 40, "income": 2}]})
    assert arrays["age"].tolist() == [30, 40]
    assert arrays["income"].tolist() == [1.5, 2.0]


def test_columns_object_is_taken_as_is() -> None:
    arrays = decode({"inputs": {"age": [30, 40], "income": [1.5, 2.5]}})
    assert arrays["age"].tolist() == [30, 40] and arrays["income"].tolist() == [1.5, 2.5]


def test_list_rows_follow_the_signature_column_order() -> None:
    arrays = decode({"instances": [[30, 1.5], [40, 2.5]]})
    assert arrays["age"].tolist() == [30, 40] and arrays["income"].tolist() == [1.5, 2.5]


def test_a_single_tensor_model_takes_bare_rows_and_bare_inputs() -> None:
    rows = [[1, 2, 3], [4, 5, 6]]
    for doc in ({"instances": rows}, {"inputs": rows}):
        arrays = decode(doc, ONE_TENSOR)
        assert list(arrays) == ["pixels"] and arrays["pixels"].shape == (2, 3)


def test_request_id_is_kept_as_text() -> None:
    req = simple.decode_request(orjson.dumps({"id": 7, "instances": [{"age": 1, "income": 1.0}]}), COLUMNS)
    assert req.id == "7"


SIMPLE_ERRORS = [
    ("invalid-json", b'{"instances": [', "body", "request body is not valid JSON"),
    ("nan-literal", b'{"instances": [{"age": 1, "income": NaN}]}', "body", "not valid JSON"),
    ("not-an-object", [1, 2], "body", 'body must be a JSON object like {"instances": [...]}'),
    ("neither", {"rows": []}, "body", 'needs exactly one of "instances" (a list of rows) or "inputs"'),
    ("both", {"instances": [], "inputs": {}}, "body", 'needs exactly one of "instances"'),
    ("empty-instances", {"instances": []}, "instances", '"instances" must be a non-empty list of rows'),
    ("instances-not-a-list", {"instances": {"age": 1}}, "instances", '"instances" must be a non-empty list'),
    (
        "row-lacks-a-field",
        {"instances": [{"age": 1, "income": 2.0}, {"age": 2}]},
        "income",
        "instance 1 lacks 'income'",
    ),
    (
        "row-has-extra-field",
        {"instances": [{"age": 1}, {"age": 2, "zip": "x"}]},
        "zip",
        "instance 1 has an extra field 'zip'",
    ),
    (
        "row-not-an-object",
        {"instances": [{"age": 1, "income": 2.0}, 5]},
        "instances",
        "instance 1 is a int; expected an object",
    ),
    (
        "list-row-too-short",
        {"instances": [[1, 2.0], [1]]},
        "instances",
        "instance 1 has 1 values but the model takes 2 columns",
    ),
    (
        "nested-value-in-row",
        {"instances": [{"age": 1, "income": [1, 2]}]},
        "income",
        "expected one scalar per row, got list",
    ),
    (
        "ragged-value-in-row",
        {"instances": [{"age": 1, "income": 2}, {"age": 1, "income": [2]}]},
        "income",
        "one scalar",
    ),
    (
        "column-not-a-list",
        {"inputs": {"age": 3, "income": [1.0]}},
        "age",
        "expected a list of values (one per row), got int",
    ),
    ("columns-not-an-object", {"inputs": [[1, 2.0]]}, "inputs", '"inputs" must be an object mapping each input name'),
    ("ragged-column", {"inputs": {"age": [[1], [2, 3]], "income": [1.0, 2.0]}}, "age", "expected a rectangular array"),
]


@pytest.mark.parametrize(("doc", "field", "message"), [c[1:] for c in SIMPLE_ERRORS], ids=[c[0] for c in SIMPLE_ERRORS])
def test_malformed_bodies_name_the_field(doc: Any, field: str, message: str) -> None:
    err = decode_error(doc)
    assert err.field == field
    assert message in err.message


VALIDATION_ERRORS = [
    ("string-in-number", {"instances": [{"age": 1, "income": "a lot"}]}, "income", "got strings such as 'a lot'"),
    ("string-among-numbers", {"inputs": {"age": [1, 2], "income": [1.0, "x"]}}, "income", "got str 'x' at position 1"),
    (
        "bool-among-numbers",
        {"inputs": {"age": [1, 2], "income": [True, 2.5]}},
        "income",
        "got boolean True at position 0",
    ),
    ("all-bools", {"inputs": {"age": [1, 2], "income": [True, False]}}, "income", "expected FP64[-1], got BOOL[2]"),
    (
        "null",
        {"instances": [{"age": 1, "income": 1.0}, {"age": 2, "income": None}]},
        "income",
        "got null at position 1",
    ),
    ("fraction-in-int", {"inputs": {"age": [1.5], "income": [1.0]}}, "age", "expected whole numbers (INT64)"),
    ("missing-column", {"inputs": {"age": [1]}}, "income", "missing input 'income'"),
    ("unknown-column", {"instances": [{"age": 1, "income": 2.0, "zip": 1}]}, "zip", "unexpected input 'zip'"),
    ("row-counts-differ", {"inputs": {"age": [1, 2], "income": [1.0]}}, "income", "has 1 rows but 'age' has 2"),
    ("zero-rows", {"inputs": {"age": [], "income": []}}, "age", "expected at least one row, got 0 rows"),
]


@pytest.mark.parametrize(
    ("doc", "field", "message"), [c[1:] for c in VALIDATION_ERRORS], ids=[c[0] for c in VALIDATION_ERRORS]
)
def test_wrong_values_are_named_by_the_signature(doc: Any, field: str, message: str) -> None:
    err = validate_error(doc)
    assert err.field == field
    assert message in err.message


def test_one_output_gives_a_list_of_values() -> None:
    resp = InferenceResponse("m", "2", [Tensor("predict", np.array([1, 0]))], id="r")
    assert simple.encode_response(resp) == {"model_name": "m", "model_version": "2", "id": "r", "predictions": [1, 0]}


def test_several_outputs_give_one_object_per_row() -> None:
    resp = InferenceResponse(
        "m",
        "2",
        [Tensor("label", np.array(["a", "b"], dtype=object)), Tensor("score", np.array([0.5, 0.25]))],
    )
    assert simple.encode_response(resp)["predictions"] == [
        {"label": "a", "score": 0.5},
        {"label": "b", "score": 0.25},
    ]


def test_bytes_outputs_are_decoded_as_text() -> None:
    resp = InferenceResponse("m", "1", [Tensor("s", np.array([b"caf\xc3\xa9", "x"], dtype=object))])
    assert simple.encode_response(resp)["predictions"] == ["café", "x"]
