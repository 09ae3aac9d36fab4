"""Score one chunk of a table: Arrow columns in, predictions and rejected rows out.

Every engine (local processes, Dask, Spark's ``mapInPandas``) calls ``score``
on its chunks, so they all make the same checks and the same predictions.
The signature decides everything: which columns are inputs, how text from a
CSV file becomes numbers, and what the prediction columns' types are.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from shipyard.errors import ConfigError, InferenceError, InvalidInput
from shipyard.jobs.batch.rejects import RowError, isolate, take
from shipyard.registry import LoadedModel
from shipyard.signature import Signature, TensorSpec

MODEL_NAME = "model_name"
MODEL_VERSION = "model_version"
REJECT_REASON = "reject_reason"

_ARROW_TYPES: dict[str, pa.DataType] = {
    "BOOL": pa.bool_(),
    "INT8": pa.int8(),
    "INT16": pa.int16(),
    "INT32": pa.int32(),
    "INT64": pa.int64(),
    "UINT8": pa.uint8(),
    "UINT16": pa.uint16(),
    "UINT32": pa.uint32(),
    "UINT64": pa.uint64(),
    "FP16": pa.float16(),
    "FP32": pa.float32(),
    "FP64": pa.float64(),
    "BYTES": pa.string(),
}
# What text is parsed into before the signature check casts it to the declared type.
_PARSE_TYPES: dict[str, pa.DataType] = {"BOOL": pa.bool_(), "UINT64": pa.uint64()}


@dataclass(frozen=True)
class ModelPin:
    """The exact version a job uses, fixed when the job starts (an alias may move meanwhile)."""

    name: str
    version: int
    digest: str

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"


@dataclass(frozen=True)
class ScoringSpec:
    """Everything a worker needs besides the data; small and picklable."""

    pin: ModelPin
    signature: Signature
    passthrough: tuple[str, ...]
    """Input columns copied to the output next to the predictions (ids, or every input column)."""

    parse_strings: bool
    """Inputs come from text (CSV, JSON): a text column where the signature wants numbers is parsed."""

    output_schema: pa.Schema


@dataclass(frozen=True)
class Chunk:
    """Rows as read: an Arrow table, plus inputs a reader could only give as NumPy (mixed JSON types)."""

    table: pa.Table
    arrays: dict[str, np.ndarray[Any, Any]] = field(default_factory=dict)
    errors: tuple[RowError, ...] = ()
    """Rows the reader could not parse at all (say, a line that is not JSON)."""

    @property
    def num_rows(self) -> int:
        return int(self.table.num_rows)


@dataclass
class Scored:
    """The outcome for one chunk."""

    valid: np.ndarray[Any, Any]
    """Mask of the rows that got a prediction."""

    predictions: dict[str, np.ndarray[Any, Any]]
    """Model outputs for the valid rows, in row order."""

    inputs: dict[str, np.ndarray[Any, Any]] | None
    """The checked inputs of the valid rows (what the model saw), when asked for."""

    errors: list[RowError]
    """One per rejected row, by row order."""

    @property
    def predicted(self) -> int:
        return int(self.valid.sum())


# -- types -------------------------------------------------------------------------------


def arrow_type(spec: TensorSpec) -> pa.DataType:
    """The Arrow type of one row of ``spec``: a scalar, or a (fixed-size) list for n-D tensors."""
    t = _ARROW_TYPES[spec.datatype]
    for dim in reversed(spec.shape[1:]):
        t = pa.list_(t, dim) if dim > 0 else pa.list_(t)
    return t


def output_schema(signature: Signature, input_schema: pa.Schema, passthrough: Sequence[str]) -> pa.Schema:
    """Columns of every output part: pass-through columns, one per model output, model name and version.

    A pass-through column that is also a model input holds the checked value the model
    saw, so it has the signature's type (a CSV column of text becomes numbers).
    """
    fields: list[pa.Field] = []
    for name in passthrough:
        spec = signature.input(name)
        fields.append(pa.field(name, arrow_type(spec) if spec else input_schema.field(name).type))
    if not signature.outputs:
        raise ConfigError("this version's signature lists no outputs; re-register it with a sample")
    for out in signature.outputs:
        fields.append(pa.field(out.name, arrow_type(out)))
    fields += [pa.field(MODEL_NAME, pa.string()), pa.field(MODEL_VERSION, pa.int64())]
    names = [f.name for f in fields]
    clash = next((n for n in names if names.count(n) > 1), None)
    if clash is not None:
        raise ConfigError(
            f"the output would have two columns named '{clash}' (an input column and a model output or "
            f"{MODEL_NAME}/{MODEL_VERSION}); rename the input column or leave it out of --id-column"
        )
    return pa.schema(fields)


# -- reading inputs ------------------------------------------------------------------------


def input_arrays(chunk: Chunk, spec: ScoringSpec) -> dict[str, np.ndarray[Any, Any]]:
    """One NumPy array per signature input, as read (the signature check comes later)."""
    out: dict[str, np.ndarray[Any, Any]] = {}
    for s in spec.signature.inputs:
        if s.name in chunk.arrays:
            out[s.name] = chunk.arrays[s.name]
        else:
            out[s.name] = column_to_numpy(chunk.table.column(s.name), s, parse_strings=spec.parse_strings)
    return out


def column_to_numpy(col: pa.ChunkedArray | pa.Array, spec: TensorSpec, *, parse_strings: bool) -> np.ndarray[Any, Any]:
    """An Arrow column as the NumPy array the signature check expects.

    Nulls become NaN in numeric columns and None in others, so the check rejects those
    rows by name. Dictionary columns are decoded first: pyarrow's ``to_numpy`` on a
    chunked dictionary column with nulls returns wrong values (seen with pyarrow 26).
    """
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    text = pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)
    if parse_strings and text and spec.datatype != "BYTES":
        return _parse_text(arr, spec)
    if len(spec.shape) > 1 and _is_list(arr.type):
        return _nested(arr, spec)
    return arr.to_numpy(zero_copy_only=False)  # type: ignore[no-any-return]


def _is_list(t: pa.DataType) -> bool:
    return bool(pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t))


def _nested(arr: pa.Array, spec: TensorSpec) -> np.ndarray[Any, Any]:
    """A list column as an n-D array; every row must be a list of the same length (no nulls)."""
    n = len(arr)
    dims: list[int] = []
    values = arr
    while _is_list(values.type):
        if values.null_count:
            raise InvalidInput.for_field(spec.name, f"a list in every row ({spec.describe()})", "a null list")
        lengths = pc.list_value_length(values).to_numpy(zero_copy_only=False)
        if lengths.size and (lengths != lengths[0]).any():
            raise InvalidInput.for_field(
                spec.name, spec.describe(), f"lists of different lengths ({int(lengths.min())} to {int(lengths.max())})"
            )
        dims.append(int(lengths[0]) if lengths.size else 0)
        values = values.flatten()
    flat = values.to_numpy(zero_copy_only=False)
    return flat.reshape(n, *dims)  # type: ignore[no-any-return]


def _parse_text(arr: pa.Array, spec: TensorSpec) -> np.ndarray[Any, Any]:
    """Numbers (or booleans) from text; values that do not parse stay text, for the check to name."""
    target = _PARSE_TYPES.get(spec.datatype, pa.float64() if spec.datatype.startswith("FP") else pa.int64())
    try:
        return pc.cast(arr, target).to_numpy(zero_copy_only=False)  # type: ignore[no-any-return]
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass  # some value does not parse: go value by value so that only its row is rejected
    values = arr.to_pylist()
    out = np.empty(len(values), dtype=object)
    out[:] = [_parse_value(v, spec.datatype == "BOOL") for v in values]
    return out


def _parse_value(text: str | None, boolean: bool) -> Any:
    if text is None:
        return None
    s = text.strip()
    if boolean:
        low = s.lower()
        if low in ("true", "1"):
            return True
        if low in ("false", "0"):
            return False
        return text
    for conv in (int, float):
        try:
            return conv(s)
        except ValueError:
            continue
    return text


# -- scoring -------------------------------------------------------------------------------


def score(model: LoadedModel, chunk: Chunk, spec: ScoringSpec, *, keep_inputs: bool = False) -> Scored:
    """Check every row of ``chunk`` against the signature and predict the good ones.

    Args:
        model: the loaded version (``spec.pin``).
        chunk: the rows.
        spec: the job's scoring options.
        keep_inputs: also return the checked inputs of the good rows.

    Raises:
        InferenceError: the model itself failed on good rows.
        InvalidInput: the model refused input that the signature accepted.
    """
    n = chunk.num_rows
    raw = input_arrays(chunk, spec)
    errors = list(chunk.errors)
    idx = np.arange(n)
    if errors:
        idx = np.setdiff1d(idx, [e.row for e in errors])
        raw = take(raw, idx)
    predictions: dict[str, np.ndarray[Any, Any]] = {}
    if idx.size:
        try:
            predictions = model.predict_arrays(raw)
        except InvalidInput:
            ok, bad = isolate(spec.signature, raw, int(idx.size))
            if not bad:
                raise  # not a row problem: the model refused what the signature accepts
            errors += [RowError(int(idx[e.row]), e.field, e.reason) for e in bad]
            good = np.flatnonzero(ok)
            idx = idx[good]
            raw = take(raw, good)
            predictions = model.predict_arrays(raw) if idx.size else {}
    valid = np.zeros(n, dtype=bool)
    valid[idx] = True
    for name, arr in predictions.items():
        if np.ndim(arr) == 0 or len(arr) != idx.size:
            raise InferenceError(
                f"model {spec.pin.ref} returned {np.shape(arr)} for output '{name}' on {idx.size} rows"
            )
    inputs = spec.signature.validate(raw) if keep_inputs and idx.size else None
    errors.sort(key=lambda e: e.row)
    return Scored(valid, predictions, inputs, errors)


# -- building output -----------------------------------------------------------------------


def to_arrow(values: np.ndarray[Any, Any], t: pa.DataType) -> pa.Array:
    """A NumPy array (rows first) as an Arrow array of type ``t``; lossy casts fail."""
    if pa.types.is_fixed_size_list(t):
        n, size = values.shape[0], t.list_size
        if values.ndim < 2 or values.shape[1] != size:
            raise InferenceError(f"expected rows of {size} values, got an array of shape {list(values.shape)}")
        inner = to_arrow(values.reshape(n * size, *values.shape[2:]), t.value_type)
        return pa.FixedSizeListArray.from_arrays(inner, size)
    if pa.types.is_list(t):
        return pa.array([np.asarray(v).tolist() for v in values], type=t)
    if values.dtype.kind == "O" or pa.types.is_string(t):
        return pa.array(values, type=t, from_pandas=True)
    try:
        return pa.array(np.ascontiguousarray(values)).cast(t)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise InferenceError(f"cannot store {values.dtype} values as {t}: {exc}") from None


def output_table(chunk: Chunk, scored: Scored, spec: ScoringSpec) -> pa.Table:
    """The good rows: pass-through columns, predictions, model name and version."""
    good = np.flatnonzero(scored.valid)
    m = int(good.size)
    everything = m == chunk.num_rows
    columns: list[pa.Array | pa.ChunkedArray] = []
    for f in spec.output_schema:
        if f.name in spec.passthrough:
            if spec.signature.input(f.name) is not None:
                columns.append(to_arrow(scored.inputs[f.name], f.type) if scored.inputs else pa.array([], f.type))
            else:
                col = chunk.table.column(f.name)
                col = col if everything else col.take(pa.array(good))
                columns.append(col if col.type == f.type else col.cast(f.type))
        elif f.name == MODEL_NAME:
            columns.append(pa.repeat(pa.scalar(spec.pin.name, pa.string()), m))
        elif f.name == MODEL_VERSION:
            columns.append(pa.repeat(pa.scalar(spec.pin.version, pa.int64()), m))
        elif f.name in scored.predictions:
            columns.append(to_arrow(scored.predictions[f.name], f.type))
        elif m == 0:
            columns.append(pa.array([], f.type))
        else:
            raise InferenceError(f"model {spec.pin.ref} did not return its output '{f.name}'")
    return pa.Table.from_arrays(columns, schema=spec.output_schema)


def all_rows_table(chunk: Chunk, scored: Scored, spec: ScoringSpec) -> pa.Table:
    """Every row in input order: pass-through columns as read, predictions (null where rejected),
    model name and version, and ``reject_reason`` (null where predicted). Used for DataFrames."""
    n = chunk.num_rows
    where = pa.array(np.cumsum(scored.valid) - 1, mask=~scored.valid)  # row -> index among good rows
    reasons = np.full(n, None, dtype=object)
    for e in scored.errors:
        reasons[e.row] = e.reason
    arrays: list[pa.Array | pa.ChunkedArray] = []
    names: list[str] = []
    for f in spec.output_schema:
        names.append(f.name)
        if f.name in spec.passthrough:
            arrays.append(chunk.table.column(f.name))
        elif f.name in (MODEL_NAME, MODEL_VERSION):
            value = spec.pin.name if f.name == MODEL_NAME else spec.pin.version
            arrays.append(pa.repeat(pa.scalar(value, f.type), n))
        else:
            good = scored.predictions.get(f.name)
            dense = to_arrow(good, f.type) if good is not None else pa.array([], f.type)
            arrays.append(dense.take(where))
    arrays.append(pa.array(reasons, type=pa.string(), from_pandas=True))
    names.append(REJECT_REASON)
    return pa.Table.from_arrays(arrays, names=names)


def reject_records(chunk: Chunk, scored: Scored, *, source: str, first_row: int) -> list[dict[str, Any]]:
    """One JSON-ready record per rejected row: where it came from, why, and its input values."""
    if not scored.errors:
        return []
    rows = [e.row for e in scored.errors]
    # with no table columns (JSON Lines, no pass-through), every input came as NumPy
    table = chunk.table
    values = table.take(pa.array(rows, pa.int64())).to_pylist() if table.num_columns else [{} for _ in rows]
    out = []
    for e, row in zip(scored.errors, values, strict=True):
        for name, arr in chunk.arrays.items():
            row[name] = _plain(arr[e.row])
        out.append({"file": source, "row": first_row + e.row, "field": e.field, "reason": e.reason, "input": row})
    return out


def _plain(x: Any) -> Any:
    return x.item() if isinstance(x, np.generic) else x
