"""Input/output schema of a model version: inferred from a sample, checked on every request.

A signature is a list of named tensor specs for inputs and outputs. Its
``format`` says how the model wants its inputs:

* ``columns``: a table. Each input is one named 1-D column (shape ``[-1]``);
  runtimes build a DataFrame or a 2-D matrix from them.
* ``tensors``: named n-D arrays whose first dimension is the batch.

``validate`` turns decoded request arrays into exactly what the signature
promises, or raises ``InvalidInput`` naming the field, what was expected and
what arrived. It is pure: no I/O, no model. It refuses any name the signature
does not have: that is the Open Inference Protocol's tensor contract.

``extra_fields`` is the policy of the record surfaces (``/v1`` predict, GraphQL,
streams, the Python ``predict``) for fields beside the features, such as ids:
``refuse`` (the default, so that a typo is caught), ``ignore`` (drop them) or
``passthrough`` (drop them before the model, return them beside each
prediction). ``split_extra`` applies it to named columns; a version stored
before the policy existed reads as ``refuse``.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from shipyard.errors import InvalidInput
from shipyard.types import DATATYPE_TO_NUMPY, EXTRA_FIELDS, datatype_of

V = TypeVar("V")

_FLOAT_TYPES = {"FP16", "FP32", "FP64"}
_INT_TYPES = {"INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"}


@dataclass(frozen=True)
class TensorSpec:
    """One named input or output: datatype, shape (-1 = any size) and NaN policy."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    allow_nan: bool = False

    def describe(self) -> str:
        return f"{self.datatype}{list(self.shape)}"

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}
        if self.allow_nan:
            d["allow_nan"] = True
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TensorSpec:
        return cls(
            name=str(d["name"]),
            datatype=str(d["datatype"]),
            shape=tuple(int(x) for x in d["shape"]),
            allow_nan=bool(d.get("allow_nan", False)),
        )


@dataclass(frozen=True)
class Signature:
    """The inputs a model version accepts and the outputs it returns."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...] = ()
    format: str = "tensors"
    extra_fields: str = "refuse"
    """What record surfaces do with fields the model does not take: refuse, ignore or passthrough."""
    _by_name: dict[str, TensorSpec] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.format not in ("columns", "tensors"):
            raise ValueError(f"signature format must be 'columns' or 'tensors', not {self.format!r}")
        if self.extra_fields not in EXTRA_FIELDS:
            raise ValueError(f"extra_fields must be one of {', '.join(EXTRA_FIELDS)}, not {self.extra_fields!r}")
        self._by_name.update({s.name: s for s in self.inputs})
        float_columns = self.format == "columns" and all(
            s.datatype in ("FP32", "FP64") and s.shape == (-1,) for s in self.inputs
        )
        object.__setattr__(self, "float_columns", float_columns)
        only = self.inputs[0] if len(self.inputs) == 1 else None
        if self.format == "tensors" and only is not None and only.datatype == "FP64" and only.shape:
            object.__setattr__(self, "float_tensor", only)

    float_columns: bool = field(default=False, init=False, compare=False, repr=False)
    """Every input is a 1-D float column: the common tabular case, which has a fast path."""
    float_tensor: TensorSpec | None = field(default=None, init=False, compare=False, repr=False)
    """The one input, when it is a single FP64 tensor of one or more dimensions (an array signature): a fast path."""

    @property
    def input_names(self) -> list[str]:
        return [s.name for s in self.inputs]

    def input(self, name: str) -> TensorSpec | None:
        return self._by_name.get(name)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "format": self.format,
            "inputs": [s.to_dict() for s in self.inputs],
            "outputs": [s.to_dict() for s in self.outputs],
        }
        if self.extra_fields != "refuse":  # stored only when set, so older records and new ones read alike
            d["extra_fields"] = self.extra_fields
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Signature:
        return cls(
            inputs=tuple(TensorSpec.from_dict(x) for x in d["inputs"]),
            outputs=tuple(TensorSpec.from_dict(x) for x in d.get("outputs", ())),
            format=str(d.get("format", "tensors")),
            extra_fields=str(d.get("extra_fields", "refuse")),
        )

    def with_outputs(self, outputs: Mapping[str, np.ndarray[Any, Any]]) -> Signature:
        """A copy whose outputs are described from one model run on the sample."""
        specs = tuple(_spec_for(name, np.asarray(arr)) for name, arr in outputs.items())
        return Signature(inputs=self.inputs, outputs=specs, format=self.format, extra_fields=self.extra_fields)

    def with_extra_fields(self, extra_fields: str) -> Signature:
        """A copy with another extra-fields policy (set at registration, or by a server for what it serves)."""
        if extra_fields == self.extra_fields:
            return self
        return Signature(inputs=self.inputs, outputs=self.outputs, format=self.format, extra_fields=extra_fields)

    # -- fields the model does not take -------------------------------------

    def unexpected_input(
        self, name: str, given: Any = (), *, record: bool = False, lead: str | None = None
    ) -> InvalidInput:
        """The error for an input this model does not take.

        Args:
            name: the unknown name.
            given: every name of the request; an input missing from it that is close to
                ``name`` is offered as what was meant.
            record: the request came through a record surface, where ``extra_fields``
                can accept other fields; the message says how.
            lead: what the message starts with instead of ``unexpected input 'NAME'``.
        """
        missing = [n for n in self.input_names if n not in given]
        near = difflib.get_close_matches(name, missing, n=1)
        head = lead if lead is not None else f"unexpected input '{name}'"
        message = f"{head}: this model takes {_names(self.input_names)}"
        if near:
            message += f"; did you mean '{near[0]}'?"
        if record:
            message += " (set extra_fields to 'ignore' or 'passthrough' to accept other fields)"
        return InvalidInput(message, field=name, expected=self.input_names, got=name)

    def split_extra(self, columns: Mapping[str, V]) -> tuple[dict[str, V], dict[str, V]]:
        """Named columns of a record surface as (the model's inputs, the extra fields), by ``extra_fields``.

        ``refuse`` raises on the first extra name (the message names the option),
        ``ignore`` returns no extra fields, ``passthrough`` returns them all. One look
        per name: the values are not touched.
        """
        by_name = self._by_name
        if all(k in by_name for k in columns):
            return dict(columns), {}
        if self.extra_fields == "refuse":
            unknown = next(k for k in columns if k not in by_name)
            raise self.unexpected_input(unknown, columns, record=True)
        inputs = {k: v for k, v in columns.items() if k in by_name}
        extra = {k: v for k, v in columns.items() if k not in by_name} if self.extra_fields == "passthrough" else {}
        return inputs, extra

    # -- validation ---------------------------------------------------------

    def validate(self, arrays: Mapping[str, np.ndarray[Any, Any]]) -> dict[str, np.ndarray[Any, Any]]:
        """Check and convert request arrays to the signature; raise InvalidInput if they differ.

        Returns a new dict in signature order, each array cast to the declared dtype.
        """
        if self.float_columns:
            fast = self._validate_float_columns(arrays)
            if fast is not None:
                return fast
        elif self.float_tensor is not None and len(arrays) == 1:
            spec = self.float_tensor
            a = arrays.get(spec.name)
            # a well-formed float64 array of the declared shape, values finite: what the full check accepts as is
            if (type(a) is np.ndarray and a.dtype == np.float64 and a.ndim == len(spec.shape) and a.shape[0]
                    and all(want in (-1, got) for want, got in zip(spec.shape, a.shape, strict=True))
                    and (spec.allow_nan or np.isfinite(a).all())):
                return {spec.name: a}
        unknown = [k for k in arrays if k not in self._by_name]
        if unknown:
            raise self.unexpected_input(unknown[0], arrays)
        out: dict[str, np.ndarray[Any, Any]] = {}
        rows: tuple[str, int] | None = None
        for spec in self.inputs:
            if spec.name not in arrays:
                raise InvalidInput(
                    f"missing input '{spec.name}': expected {spec.describe()}; "
                    f"this model takes {_names(self.input_names)}",
                    field=spec.name,
                    expected=spec.describe(),
                    got="nothing",
                )
            arr = _check_one(spec, arrays[spec.name], columns=self.format == "columns")
            n = arr.shape[0] if arr.ndim else 1
            if rows is None:
                rows = (spec.name, n)
            elif n != rows[1]:
                raise InvalidInput(
                    f"input '{spec.name}' has {n} rows but '{rows[0]}' has {rows[1]}: "
                    "every input must have the same number of rows",
                    field=spec.name,
                    expected=rows[1],
                    got=n,
                )
            out[spec.name] = arr
        return out


    def _validate_float_columns(self, arrays: Mapping[str, np.ndarray[Any, Any]]) -> dict[str, Any] | None:
        """One cheap pass for well-formed float columns; None sends anything unusual to the full check."""
        if len(arrays) != len(self.inputs):
            return None
        block = _shared_block(arrays, len(self.inputs))
        if block is not None and block.dtype == np.float64 and all(s.datatype == "FP64" for s in self.inputs):
            # every column is a view of one [rows, columns] block: one finiteness pass for all
            if not all(name in arrays for name in self.input_names) or not len(block):
                return None
            if any(not s.allow_nan for s in self.inputs) and not np.isfinite(block).all():
                return None
            return {name: arrays[name] for name in self.input_names}
        out: dict[str, np.ndarray[Any, Any]] = {}
        n = -1
        for spec in self.inputs:
            a = arrays.get(spec.name)
            if (
                type(a) is not np.ndarray
                or a.ndim != 1
                or a.dtype != DATATYPE_TO_NUMPY[spec.datatype]  # casts (and their overflow) take the full path
                or (n != -1 and len(a) != n)
            ):
                return None
            n = len(a)
            if n == 0:
                return None
            if not spec.allow_nan and not np.isfinite(a).all():
                return None  # the full check names the bad value
            out[spec.name] = a
        return out


def _shared_block(arrays: Mapping[str, Any], width: int) -> np.ndarray[Any, Any] | None:
    """The 2-D array all these 1-D columns are views of, if there is one."""
    base = None
    for a in arrays.values():
        if type(a) is not np.ndarray or a.ndim != 1:
            return None
        b = a.base
        if b is None or (base is not None and b is not base):
            return None
        base = b
    if type(base) is not np.ndarray or base.ndim != 2 or base.shape[1] != width:
        return None
    return base


def _names(names: list[str]) -> str:
    shown = ", ".join(f"'{n}'" for n in names[:20])
    return shown + (f" and {len(names) - 20} more" if len(names) > 20 else "")


def _describe_array(arr: np.ndarray[Any, Any]) -> str:
    try:
        dt = datatype_of(arr)
    except InvalidInput:
        dt = str(arr.dtype)
    if arr.dtype.kind in ("U", "S") and arr.size:
        return f"strings such as {arr.ravel()[0].item()!r} (BYTES{list(arr.shape)})"
    if dt == "BYTES" and arr.size:
        kinds = sorted({type(x).__name__ for x in arr.ravel()[:1000]})
        dt = "BYTES (" + "/".join("null" if k == "NoneType" else k for k in kinds) + ")"
    return f"{dt}{list(arr.shape)}"


def _check_one(spec: TensorSpec, value: Any, *, columns: bool) -> np.ndarray[Any, Any]:
    arr = value if isinstance(value, np.ndarray) else np.asarray(value)
    # shape ---------------------------------------------------------------
    if columns and arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr.reshape(-1)  # clients often send a column as [n, 1]
    if columns and arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != len(spec.shape) or any(
        want != -1 and got != want for want, got in zip(spec.shape, arr.shape, strict=True)
    ):
        raise InvalidInput.for_field(spec.name, f"shape {list(spec.shape)}", f"shape {list(arr.shape)}")
    if arr.ndim and arr.shape[0] == 0:
        raise InvalidInput.for_field(spec.name, "at least one row", "0 rows")
    # dtype ---------------------------------------------------------------
    want = spec.datatype
    kind = arr.dtype.kind
    if want == "BYTES":
        if kind in ("U", "S"):
            return arr.astype(object)
        if kind == "O":
            bad = _first_not(arr, (str, bytes))
            if bad is not _ALL_OK:
                raise InvalidInput.for_field(spec.name, "strings", _value_desc(bad))
            return arr
        raise InvalidInput.for_field(spec.name, "strings (BYTES)", _describe_array(arr))
    if kind == "O":
        arr = _coerce_object(spec, arr)
        kind = arr.dtype.kind
    if kind in ("U", "S"):
        raise InvalidInput.for_field(spec.name, spec.describe(), _describe_array(arr))
    target = DATATYPE_TO_NUMPY[want]
    if want == "BOOL":
        if kind != "b":
            raise InvalidInput.for_field(spec.name, "BOOL (true/false)", _describe_array(arr))
        return arr
    if kind == "b":  # JSON true/false is not a number, though NumPy would cast it to 1/0
        raise InvalidInput.for_field(spec.name, spec.describe(), _describe_array(arr))
    if want in _INT_TYPES:
        if kind == "f":
            if not np.all(np.isfinite(arr)) or not np.all(np.mod(arr, 1) == 0):
                raise InvalidInput.for_field(
                    spec.name, f"whole numbers ({want})", f"fractional or non-finite values ({arr.dtype})"
                )
        elif kind not in ("i", "u"):
            raise InvalidInput.for_field(spec.name, spec.describe(), _describe_array(arr))
        info = np.iinfo(target)
        if arr.size and (arr.min() < info.min or arr.max() > info.max):
            raise InvalidInput.for_field(spec.name, f"values within {want} range", "values out of range")
        return arr.astype(target, copy=False)
    if want in _FLOAT_TYPES:
        if kind not in ("f", "i", "u"):
            raise InvalidInput.for_field(spec.name, spec.describe(), _describe_array(arr))
        with np.errstate(over="ignore"):
            cast = arr.astype(target, copy=False)
        if np.isfinite(cast).all():  # the common case, one pass: nothing overflowed, no NaN/inf
            return cast
        overflow = ~np.isfinite(cast) & np.isfinite(arr)  # e.g. 1e300 into FP32 becomes inf
        if overflow.any():
            bad_val = arr.reshape(-1)[int(np.flatnonzero(overflow.reshape(-1))[0])]
            raise InvalidInput.for_field(spec.name, f"values within {want} range", f"{bad_val}")
        arr = cast
        if not spec.allow_nan and not np.all(np.isfinite(arr)):
            bad_idx = int(np.flatnonzero(~np.isfinite(arr.reshape(-1)))[0])
            bad_val = arr.reshape(-1)[bad_idx]
            raise InvalidInput.for_field(
                spec.name, "finite numbers", f"{bad_val} at position {bad_idx}"
            )
        return arr
    raise InvalidInput.for_field(spec.name, spec.describe(), _describe_array(arr))


_ALL_OK = object()


def _first_not(arr: np.ndarray[Any, Any], types: tuple[type, ...]) -> Any:
    """The first element that is not one of ``types`` (may be None), else ``_ALL_OK``."""
    for x in arr.ravel():
        if not isinstance(x, types):
            return x
    return _ALL_OK


def _value_desc(x: Any) -> str:
    if x is None:
        return "null"
    return f"{type(x).__name__} {x!r}"[:80]


def _coerce_object(spec: TensorSpec, arr: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """Object arrays come from JSON with mixed or missing values: name the first bad one."""
    flat = arr.ravel()
    for i, x in enumerate(flat):
        if x is None:
            if spec.datatype in _FLOAT_TYPES and spec.allow_nan:
                continue
            raise InvalidInput.for_field(spec.name, spec.datatype, f"null at position {i}")
        if isinstance(x, (bool, np.bool_)) != (spec.datatype == "BOOL"):
            what = f"boolean {x}" if isinstance(x, (bool, np.bool_)) else _value_desc(x)
            raise InvalidInput.for_field(spec.name, spec.datatype, f"{what} at position {i}")
        if not isinstance(x, (int, float, bool, np.number, np.bool_)):
            raise InvalidInput.for_field(spec.name, spec.datatype, f"{_value_desc(x)} at position {i}")
    if spec.datatype == "BOOL":
        return arr.astype(np.bool_)
    try:
        if spec.datatype in _FLOAT_TYPES:
            return np.array([np.nan if x is None else x for x in flat], dtype=np.float64).reshape(arr.shape)
        if any(isinstance(x, (float, np.floating)) for x in flat):
            return np.array(list(flat), dtype=np.float64).reshape(arr.shape)
        # whole numbers: check the range in Python, where 2**70 is just a number
        target = DATATYPE_TO_NUMPY[spec.datatype]
        info = np.iinfo(target)
        lo, hi = (min(flat), max(flat)) if flat.size else (0, 0)
        if lo < info.min or hi > info.max:
            raise InvalidInput.for_field(
                spec.name, f"values within {spec.datatype} range", f"{lo if lo < info.min else hi}"
            )
        return np.array(list(flat), dtype=target).reshape(arr.shape)
    except OverflowError:
        raise InvalidInput.for_field(
            spec.name, f"values within {spec.datatype} range", "a number too large to convert"
        ) from None


#: Input datatype -> the other datatypes a declared tensor may have: those whose every value it
#: holds exactly (wider floats; wider integers; integers within the float's significand).
WIDENS_TO: dict[str, tuple[str, ...]] = {
    "FP16": ("INT8", "UINT8"),
    "FP32": ("FP16", "INT8", "INT16", "UINT8", "UINT16"),
    "FP64": ("FP32", "FP16", "INT8", "INT16", "INT32", "UINT8", "UINT16", "UINT32"),
    "INT16": ("INT8", "UINT8"),
    "INT32": ("INT8", "INT16", "UINT8", "UINT16"),
    "INT64": ("INT8", "INT16", "INT32", "UINT8", "UINT16", "UINT32"),
    "UINT16": ("UINT8",),
    "UINT32": ("UINT8", "UINT16"),
    "UINT64": ("UINT8", "UINT16", "UINT32"),
}
_NUMERIC = _FLOAT_TYPES | _INT_TYPES


def check_declared_datatypes(signature: Signature, declared: Mapping[str, str], hint: str = "") -> None:
    """Refuse a tensor whose declared datatype would not widen to its input's without loss.

    ``declared`` maps input names to the datatypes a client declared for them
    (Open Inference Protocol tensors). The input's own datatype and those in
    ``WIDENS_TO`` pass (``validate`` then converts them); a narrowing one (FP64
    for FP32, INT64 for INT32, floats for integers, INT64 for FP64) is refused.
    Mismatches involving BOOL or BYTES are left to ``validate``, which names the value.
    ``hint`` ends the message (what else the caller may do).
    """
    for name, sent in declared.items():
        spec = signature.input(name)
        if spec is None or sent == spec.datatype or sent not in _NUMERIC or spec.datatype not in _NUMERIC:
            continue
        wider = WIDENS_TO.get(spec.datatype, ())
        if sent not in wider:
            also = f" (or {', '.join(wider)}, which widen to it without loss)" if wider else ""
            exc = InvalidInput.for_field(name, f"{spec.datatype}{also}", sent)
            if hint:
                exc = InvalidInput(f"{exc.message}; {hint}", field=name, expected=exc.expected, got=sent)
            raise exc


# -- inference from a sample -----------------------------------------------


def _spec_for(name: str, arr: np.ndarray[Any, Any], *, batch_first: bool = True) -> TensorSpec:
    datatype = "BYTES" if arr.dtype.kind in ("U", "S", "O") else datatype_of(arr)
    shape = (-1, *arr.shape[1:]) if (batch_first and arr.ndim) else tuple(arr.shape)
    allow_nan = bool(arr.dtype.kind == "f" and arr.size and not np.all(np.isfinite(arr)))
    return TensorSpec(name=name, datatype=datatype, shape=tuple(int(x) for x in shape), allow_nan=allow_nan)


def sample_to_arrays(sample: Any) -> tuple[dict[str, np.ndarray[Any, Any]], str]:
    """Decode a user sample into named arrays and the signature format it implies.

    Accepts a pandas DataFrame, a list of row dicts (records), a dict of columns
    or arrays, a NumPy array or a nested list.
    """
    mod = type(sample).__module__
    if mod.startswith("pandas") and hasattr(sample, "columns"):
        cols = {}
        for c in sample.columns:
            col = sample[c]
            arr = col.to_numpy()
            if arr.dtype.kind in ("U", "S") or str(col.dtype) in ("category", "string", "str"):
                arr = col.astype(object).to_numpy()
            cols[str(c)] = arr
        return cols, "columns"
    if isinstance(sample, list) and sample and all(isinstance(r, Mapping) for r in sample):
        return records_to_columns(sample), "columns"
    if isinstance(sample, Mapping):
        arrays = {str(k): np.asarray(v) for k, v in sample.items()}
        if all(a.ndim == 1 for a in arrays.values()):
            return arrays, "columns"
        return arrays, "tensors"
    arr = np.asarray(sample)
    if arr.ndim == 0:
        raise InvalidInput("a sample must have at least one row", field="sample")
    return {"input": arr}, "tensors"


def records_to_columns(records: list[Mapping[str, Any]]) -> dict[str, np.ndarray[Any, Any]]:
    """Turn a list of row dicts into named columns; every row must have the same keys."""
    keys = list(records[0].keys())
    for i, r in enumerate(records):
        if not isinstance(r, Mapping):
            raise InvalidInput(f"instance {i} is not an object; expected one object per row", field="instances")
        if r.keys() != records[0].keys():
            missing = [k for k in keys if k not in r]
            extra = [k for k in r if k not in records[0]]
            what = f"lacks '{missing[0]}'" if missing else f"has an extra field '{extra[0]}'"
            raise InvalidInput(
                f"instance {i} {what}; every row needs the same fields as row 0",
                field=missing[0] if missing else extra[0],
            )
    cols: dict[str, np.ndarray[Any, Any]] = {}
    for k in keys:
        values = [r[k] for r in records]
        nested = next((i for i, v in enumerate(values) if _scalar_kind(v) == "nested"), None)
        if nested is not None:
            raise InvalidInput.for_field(
                str(k), "one scalar per row", f"{type(values[nested]).__name__} in instance {nested}"
            )
        cols[str(k)] = column_array(values)
    return cols


def _scalar_kind(v: Any) -> str:
    if isinstance(v, (bool, np.bool_)):
        return "bool"
    if isinstance(v, (int, float, np.number)):
        return "number"
    if isinstance(v, (str, bytes)):
        return "string"
    if v is None:
        return "null"
    if isinstance(v, (list, tuple, Mapping, np.ndarray)):
        return "nested"
    return "other"


def column_array(values: list[Any]) -> np.ndarray[Any, Any]:
    """A 1-D column from a list of scalars.

    Mixed kinds (1 and "a", true and 2.5) and nulls stay an object array, so that
    validation can name the odd value instead of NumPy quietly turning it into a
    string or a float.
    """
    kinds = {_scalar_kind(v) for v in values}
    if len(kinds) == 1 and kinds <= {"bool", "number", "string"}:
        return np.asarray(values)
    arr = np.empty(len(values), dtype=object)
    arr[:] = values
    return arr


def infer_signature(sample: Any) -> Signature:
    """Inputs of a signature from a sample (outputs are added after one model run)."""
    arrays, fmt = sample_to_arrays(sample)
    specs = tuple(_spec_for(name, arr) for name, arr in arrays.items())
    return Signature(inputs=specs, format=fmt)


def head(arrays: Mapping[str, np.ndarray[Any, Any]], n: int = 5) -> dict[str, list[Any]]:
    """The first n rows of each array, JSON-ready (used as the stored input example)."""
    out: dict[str, list[Any]] = {}
    for k, a in arrays.items():
        part = a[:n]
        if part.dtype.kind == "O":
            out[k] = [x.decode() if isinstance(x, bytes) else x for x in part.tolist()]
        else:
            out[k] = part.tolist()
    return out
