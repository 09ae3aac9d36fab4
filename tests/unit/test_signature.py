"""Signatures: inferred from a sample, and every request checked against them by name."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest

from shipyard.errors import InvalidInput
from shipyard.signature import Signature, TensorSpec, head, infer_signature, records_to_columns

TABLE = Signature(
    inputs=(
        TensorSpec("age", "INT64", (-1,)),
        TensorSpec("income", "FP64", (-1,)),
        TensorSpec("city", "BYTES", (-1,)),
        TensorSpec("member", "BOOL", (-1,)),
    ),
    format="columns",
)
IMAGE = Signature(inputs=(TensorSpec("pixels", "FP32", (-1, 2, 2)),), format="tensors")


def good(**overrides: Any) -> dict[str, np.ndarray[Any, Any]]:
    arrays = {
        "age": np.array([30, 40]),
        "income": np.array([1.5, 2.5]),
        "city": np.array(["Oslo", "Lima"]),
        "member": np.array([True, False]),
    }
    arrays.update({k: v if isinstance(v, np.ndarray) else np.asarray(v) for k, v in overrides.items()})
    return arrays


def refused(arrays: dict[str, Any], signature: Signature = TABLE) -> InvalidInput:
    with pytest.raises(InvalidInput) as info:
        signature.validate(arrays)
    return info.value


# -- inference ---------------------------------------------------------------------


def test_a_dataframe_gives_named_columns() -> None:
    df = pd.DataFrame({"age": [30, 40], "income": [1.5, 2.5], "city": ["Oslo", "Lima"], "member": [True, False]})
    sig = infer_signature(df)
    assert sig.format == "columns"
    assert [(s.name, s.datatype, s.shape) for s in sig.inputs] == [
        ("age", "INT64", (-1,)),
        ("income", "FP64", (-1,)),
        ("city", "BYTES", (-1,)),
        ("member", "BOOL", (-1,)),
    ]


def test_records_and_column_dicts_give_the_same_signature() -> None:
    records = [{"a": 1, "b": 0.5}, {"a": 2, "b": 1.5}]
    assert infer_signature(records) == infer_signature({"a": [1, 2], "b": [0.5, 1.5]})


def test_an_array_gives_one_tensor_with_a_free_batch_dimension() -> None:
    sig = infer_signature(np.zeros((5, 2, 2), dtype=np.float32))
    assert sig.format == "tensors"
    assert sig.inputs == (TensorSpec("input", "FP32", (-1, 2, 2)),)


def test_a_dict_of_nd_arrays_gives_tensors() -> None:
    sig = infer_signature({"ids": np.zeros((3, 4), dtype=np.int32), "mask": np.ones((3, 4), dtype=bool)})
    assert sig.format == "tensors"
    assert [(s.name, s.datatype, s.shape) for s in sig.inputs] == [("ids", "INT32", (-1, 4)), ("mask", "BOOL", (-1, 4))]


def test_allow_nan_is_inferred_from_a_sample_that_has_nan() -> None:
    sig = infer_signature(pd.DataFrame({"clean": [1.0, 2.0], "gappy": [1.0, np.nan]}))
    assert {s.name: s.allow_nan for s in sig.inputs} == {"clean": False, "gappy": True}
    checked = sig.validate({"clean": np.array([1.0]), "gappy": np.array([np.nan])})
    assert np.isnan(checked["gappy"][0])
    err = refused({"clean": np.array([np.nan]), "gappy": np.array([1.0])}, sig)
    assert err.field == "clean" and "expected finite numbers, got nan at position 0" in err.message


def test_a_scalar_sample_is_refused() -> None:
    with pytest.raises(InvalidInput, match="at least one row"):
        infer_signature(3.0)


def test_signature_round_trips_through_a_dict() -> None:
    sig = Signature(
        inputs=(TensorSpec("x", "FP64", (-1,), allow_nan=True),),
        outputs=(TensorSpec("y", "INT64", (-1,)),),
        format="columns",
    )
    assert Signature.from_dict(sig.to_dict()) == sig
    assert sig.to_dict()["inputs"] == [{"name": "x", "datatype": "FP64", "shape": [-1], "allow_nan": True}]


def test_an_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="'columns' or 'tensors'"):
        Signature(inputs=(), format="rows")


def test_outputs_are_described_from_a_model_run() -> None:
    sig = infer_signature({"x": [1.0]}).with_outputs({"label": np.array([1]), "proba": np.array([[0.2, 0.8]])})
    assert [(s.name, s.datatype, s.shape) for s in sig.outputs] == [
        ("label", "INT64", (-1,)),
        ("proba", "FP64", (-1, 2)),
    ]


def test_head_gives_json_ready_rows() -> None:
    assert head({"a": np.arange(10), "s": np.array([b"x", "y"], dtype=object)}, n=2) == {"a": [0, 1], "s": ["x", "y"]}


# -- validation: what is accepted ---------------------------------------------------


def test_valid_input_comes_back_cast_and_in_signature_order() -> None:
    arrays = good()
    checked = TABLE.validate(dict(reversed(list(arrays.items()))))
    assert list(checked) == ["age", "income", "city", "member"]
    assert [a.dtype for a in checked.values()] == [np.int64, np.float64, object, np.bool_]
    assert checked["city"].tolist() == ["Oslo", "Lima"]


def test_integers_are_accepted_for_a_float_input() -> None:
    checked = TABLE.validate(good(income=np.array([1, 2], dtype=np.int32)))
    assert checked["income"].dtype == np.float64 and checked["income"].tolist() == [1.0, 2.0]


def test_whole_floats_are_accepted_for_an_integer_input() -> None:
    checked = TABLE.validate(good(age=np.array([30.0, 41.0])))
    assert checked["age"].dtype == np.int64 and checked["age"].tolist() == [30, 41]


def test_a_column_sent_as_n_by_1_is_flattened() -> None:
    checked = TABLE.validate(good(income=np.array([[1.5], [2.5]])))
    assert checked["income"].shape == (2,)


def test_a_single_scalar_column_value_is_one_row() -> None:
    checked = TABLE.validate({"age": np.array(3), "income": np.array(1.0), "city": "x", "member": True})
    assert {k: v.shape for k, v in checked.items()} == dict.fromkeys(checked, (1,))


def test_nulls_become_nan_when_the_input_allows_nan() -> None:
    sig = Signature(inputs=(TensorSpec("x", "FP64", (-1,), allow_nan=True),), format="columns")
    checked = sig.validate({"x": np.array([1.0, None], dtype=object)})
    assert checked["x"][0] == 1.0 and np.isnan(checked["x"][1])


def test_tensor_inputs_keep_their_inner_shape() -> None:
    checked = IMAGE.validate({"pixels": np.zeros((3, 2, 2), dtype=np.float64)})
    assert checked["pixels"].dtype == np.float32 and checked["pixels"].shape == (3, 2, 2)


# -- validation: every refusal names the field --------------------------------------

REFUSALS = [
    ("missing", {"income": None}, "income", "missing input 'income': expected FP64[-1]; this model takes 'age'"),
    ("unknown", {"zip": [1, 2]}, "zip", "unexpected input 'zip': this model takes 'age', 'income', 'city', 'member'"),
    ("string-in-float", {"income": ["a", "b"]}, "income", "expected FP64[-1], got strings such as 'a'"),
    ("string-in-object-float", {"income": np.array([1.0, "b"], dtype=object)}, "income", "got str 'b' at position 1"),
    ("bool-in-float", {"income": [True, False]}, "income", "expected FP64[-1], got BOOL[2]"),
    ("bool-in-int", {"age": [True, False]}, "age", "expected INT64[-1], got BOOL[2]"),
    ("bool-in-object-float", {"income": np.array([1.0, True], dtype=object)}, "income", "boolean True at position 1"),
    (
        "null-in-float",
        {"income": np.array([1.0, None], dtype=object)},
        "income",
        "expected FP64, got null at position 1",
    ),
    ("null-in-int", {"age": np.array([None, 1], dtype=object)}, "age", "expected INT64, got null at position 0"),
    ("fraction-in-int", {"age": [30.5, 41.0]}, "age", "expected whole numbers (INT64), got fractional"),
    ("nan-in-int", {"age": [np.nan, 41.0]}, "age", "expected whole numbers (INT64), got fractional or non-finite"),
    ("int-out-of-range", {"age": np.array([2**64 - 1, 1], dtype=np.uint64)}, "age", "values within INT64 range"),
    (
        "huge-python-int",
        {"age": np.array([1, 2**70], dtype=object)},
        "age",
        "values within INT64 range, got 1180591620717",
    ),
    ("nan-in-float", {"income": [1.0, np.nan]}, "income", "expected finite numbers, got nan at position 1"),
    ("inf-in-float", {"income": [np.inf, 1.0]}, "income", "expected finite numbers, got inf at position 0"),
    ("number-in-bytes", {"city": [1, 2]}, "city", "expected strings (BYTES), got INT64[2]"),
    ("null-in-bytes", {"city": np.array(["a", None], dtype=object)}, "city", "expected strings, got null"),
    ("number-in-bool", {"member": [1, 0]}, "member", "expected BOOL (true/false), got INT64[2]"),
    (
        "int-in-object-bool",
        {"member": np.array([True, 1], dtype=object)},
        "member",
        "expected BOOL, got int 1 at position 1",
    ),
    ("2d-where-1d", {"income": [[1.0, 2.0], [3.0, 4.0]]}, "income", "expected shape [-1], got shape [2, 2]"),
    ("row-count", {"member": [True, False, True]}, "member", "input 'member' has 3 rows but 'age' has 2"),
    ("zero-rows", {k: [] for k in ("age", "income", "city", "member")}, "age", "expected at least one row, got 0 rows"),
]


@pytest.mark.parametrize(("overrides", "field", "message"), [c[1:] for c in REFUSALS], ids=[c[0] for c in REFUSALS])
def test_refusals_name_the_field_and_what_was_expected(overrides: dict[str, Any], field: str, message: str) -> None:
    arrays = good()
    for k, v in overrides.items():
        if v is None:
            del arrays[k]
        else:
            arrays[k] = v if isinstance(v, np.ndarray) else np.asarray(v)
    err = refused(arrays)
    assert err.field == field
    assert message in err.message


def test_float_overflow_into_a_narrower_float_is_refused() -> None:
    sig = Signature(inputs=(TensorSpec("x", "FP32", (-1,)),), format="columns")
    err = refused({"x": np.array([1.0, 1e300])}, sig)
    assert err.field == "x" and "expected values within FP32 range, got 1e+300" in err.message


def test_tensor_inner_shape_must_match() -> None:
    err = refused({"pixels": np.zeros((3, 2, 3))}, IMAGE)
    assert err.field == "pixels" and "expected shape [-1, 2, 2], got shape [3, 2, 3]" in err.message


# -- records -------------------------------------------------------------------------


def test_records_with_mixed_kinds_stay_objects_so_validation_can_name_the_odd_value() -> None:
    cols = records_to_columns([{"x": 1.5}, {"x": True}, {"x": "a"}])
    assert cols["x"].dtype == object and cols["x"].tolist() == [1.5, True, "a"]
    assert records_to_columns([{"x": 1}, {"x": 2.5}])["x"].dtype == np.float64


@pytest.mark.parametrize(
    ("records", "field", "message"),
    [
        ([{"a": 1, "b": 2}, {"a": 1}], "b", "instance 1 lacks 'b'"),
        ([{"a": 1}, {"a": 1, "c": 2}], "c", "instance 1 has an extra field 'c'"),
        ([{"a": 1}, [1]], "instances", "instance 1 is not an object"),
        ([{"a": [1, 2]}, {"a": [3, 4]}], "a", "expected one scalar per row, got list in instance 0"),
        ([{"a": 1}, {"a": [3]}], "a", "expected one scalar per row, got list in instance 1"),
    ],
    ids=["lacks", "extra", "not-an-object", "nested", "ragged"],
)
def test_inconsistent_records_are_refused(records: list[Any], field: str, message: str) -> None:
    with pytest.raises(InvalidInput) as info:
        records_to_columns(records)
    assert info.value.field == field and message in info.value.message
