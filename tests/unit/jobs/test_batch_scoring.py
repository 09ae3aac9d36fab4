"""Scoring one chunk: Arrow columns to checked inputs, predictions, output and rejects tables."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from sklearn.linear_model import LogisticRegression
from tests.fixtures.batch import FEATURES, iris_rows

from shipyard.errors import ConfigError, InvalidInput
from shipyard.jobs.batch.scoring import (
    Chunk,
    ModelPin,
    ScoringSpec,
    all_rows_table,
    arrow_type,
    column_to_numpy,
    output_schema,
    output_table,
    reject_records,
    score,
    to_arrow,
)
from shipyard.registry import LoadedModel, Registry
from shipyard.signature import Signature, TensorSpec

X_SPEC = TensorSpec("x", "FP64", (-1,))


@pytest.fixture
def lr(registry: Registry) -> tuple[LoadedModel, Any]:
    """LogisticRegression on iris with two outputs: labels and a [-1, 3] probability matrix."""
    data = iris_rows(300, seed=1)
    model = LogisticRegression(max_iter=500).fit(data[FEATURES], data["id"] % 3)
    registry.register(model, "lr", sample=data[FEATURES].head(), methods=["predict", "predict_proba"])
    return registry.load("lr"), model


def spec_for(m: LoadedModel, table: pa.Table, passthrough: tuple[str, ...], *, text: bool = False) -> ScoringSpec:
    pin = ModelPin(m.name, m.version.version, m.version.digest)
    schema = output_schema(m.signature, table.schema, passthrough)
    return ScoringSpec(pin, m.signature, passthrough, parse_strings=text, output_schema=schema)


def test_dictionary_columns_with_nulls_decode_to_the_right_values() -> None:
    # pyarrow's own ChunkedArray.to_numpy() returns ['a', 'b', 'b'] here
    col = pa.chunked_array([pa.array(["a", None, "b"]).dictionary_encode()])
    out = column_to_numpy(col, TensorSpec("c", "BYTES", (-1,)), parse_strings=False)
    assert out.tolist() == ["a", None, "b"]


def test_nulls_in_numeric_columns_become_nan_for_the_check_to_reject() -> None:
    out = column_to_numpy(pa.chunked_array([pa.array([1, None, 3])]), X_SPEC, parse_strings=False)
    assert out.dtype == np.float64 and np.isnan(out[1])


def test_text_columns_are_parsed_as_numbers_and_bad_values_stay_text() -> None:
    good = column_to_numpy(pa.array(["1.5", "2", "-3e2"]), X_SPEC, parse_strings=True)
    assert good.dtype == np.float64 and good.tolist() == [1.5, 2.0, -300.0]
    mixed = column_to_numpy(pa.array(["1.5", " 2 ", "abc", None]), X_SPEC, parse_strings=True)
    assert mixed.tolist() == [1.5, 2, "abc", None]
    flags = column_to_numpy(pa.array(["true", "0", "maybe"]), TensorSpec("b", "BOOL", (-1,)), parse_strings=True)
    assert flags.tolist() == [True, False, "maybe"]
    # without parse_strings (Parquet), text where numbers belong is left for the check to refuse
    assert column_to_numpy(pa.array(["1.5"]), X_SPEC, parse_strings=False).tolist() == ["1.5"]


def test_list_columns_become_tensors_and_ragged_lists_are_refused() -> None:
    spec = TensorSpec("img", "FP32", (-1, 2, 2))
    col = pa.array([[[1.0, 2.0], [3.0, 4.0]], [[5.0, 6.0], [7.0, 8.0]]])
    assert column_to_numpy(col, spec, parse_strings=False).shape == (2, 2, 2)
    with pytest.raises(InvalidInput, match="lists of different lengths"):
        column_to_numpy(pa.array([[[1.0, 2.0]], [[1.0, 2.0], [3.0, 4.0]]]), spec, parse_strings=False)


def test_arrow_types_follow_the_signature_shapes() -> None:
    assert arrow_type(TensorSpec("p", "FP64", (-1,))) == pa.float64()
    assert arrow_type(TensorSpec("p", "FP32", (-1, 3))) == pa.list_(pa.float32(), 3)
    assert arrow_type(TensorSpec("p", "INT64", (-1, -1))) == pa.list_(pa.int64())
    assert arrow_type(TensorSpec("p", "BYTES", (-1,))) == pa.string()
    arr = to_arrow(np.arange(6, dtype=np.float64).reshape(2, 3), pa.list_(pa.float64(), 3))
    assert arr.to_pylist() == [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]


def test_an_output_column_clashing_with_an_input_column_is_refused() -> None:
    sig = Signature(inputs=(X_SPEC,), outputs=(TensorSpec("predict", "INT64", (-1,)),), format="columns")
    schema = pa.schema([("x", pa.float64()), ("predict", pa.string())])
    with pytest.raises(ConfigError, match="two columns named 'predict'"):
        output_schema(sig, schema, ("predict",))


def test_score_predicts_the_good_rows_and_names_the_bad_ones(lr: tuple[LoadedModel, Any]) -> None:
    m, raw = lr
    data = iris_rows(1000, seed=2, bad_every=100)
    table = pa.Table.from_pandas(data, preserve_index=False)
    spec = spec_for(m, table, ("id",))
    scored = score(m, Chunk(table), spec)
    bad = data["petal_width"].isna().to_numpy()
    assert scored.valid.tolist() == (~bad).tolist()
    assert [e.row for e in scored.errors] == np.flatnonzero(bad).tolist()
    assert {e.reason for e in scored.errors} == {"input 'petal_width': expected finite numbers, got nan"}
    np.testing.assert_array_equal(scored.predictions["predict"], raw.predict(data.loc[~bad, FEATURES]))

    out = output_table(Chunk(table), scored, spec)
    assert out.column_names == ["id", "predict", "predict_proba", "model_name", "model_version"]
    assert out.schema.field("predict_proba").type == pa.list_(pa.float64(), 3)
    assert out.column("id").to_pylist() == data.loc[~bad, "id"].tolist()
    assert set(out.column("model_name").to_pylist()) == {"lr"} and set(out.column("model_version").to_pylist()) == {1}

    everything = all_rows_table(Chunk(table), scored, spec)
    assert everything.num_rows == 1000
    assert everything.column("predict").null_count == int(bad.sum())
    assert everything.column("reject_reason").null_count == int((~bad).sum())

    records = reject_records(Chunk(table), scored, source="in.parquet", first_row=5000)
    assert records[0] == {
        "file": "in.parquet",
        "row": 5007,
        "field": "petal_width",
        "reason": "input 'petal_width': expected finite numbers, got nan",
        "input": {**data.iloc[7][["id", *FEATURES[:3]]].to_dict(), "petal_width": None},
    }


def test_kept_input_columns_hold_what_the_model_saw(lr: tuple[LoadedModel, Any]) -> None:
    m, _ = lr
    data = iris_rows(5).astype({f: str for f in FEATURES})
    data.loc[3, "sepal_length"] = "n/a"
    table = pa.Table.from_pandas(data, preserve_index=False)
    spec = spec_for(m, table, ("id", *FEATURES), text=True)
    scored = score(m, Chunk(table), spec, keep_inputs=True)
    out = output_table(Chunk(table), scored, spec)
    assert out.num_rows == 4 and out.schema.field("sepal_length").type == pa.float64()
    assert out.column("id").to_pylist() == [0, 1, 2, 4]
    assert scored.errors[0].reason == "input 'sepal_length': expected FP64, got str 'n/a'"


def test_a_chunk_of_only_bad_rows_gives_an_empty_part_with_the_full_schema(lr: tuple[LoadedModel, Any]) -> None:
    m, _ = lr
    data = iris_rows(3)
    data["petal_width"] = np.nan
    table = pa.Table.from_pandas(data, preserve_index=False)
    spec = spec_for(m, table, ("id",))
    scored = score(m, Chunk(table), spec)
    out = output_table(Chunk(table), scored, spec)
    assert out.num_rows == 0 and out.schema == spec.output_schema and len(scored.errors) == 3
