"""The simple JSON API (``POST /v1/models/{name}:predict``) for humans and curl.

Two request shapes:

* records: ``{"instances": [{"col": 1.0, ...}, ...]}`` (or, for a model with one
  tensor input, ``{"instances": [[...], [...]]}``);
* columns: ``{"inputs": {"col": [...], ...}}`` (or ``{"inputs": [[...]]}`` for
  one tensor input).

Response: ``{"model_name", "model_version", "id", "predictions": [...]}`` where each
prediction is a value when the model has one output and an object otherwise.

Fields beside the model's inputs (ids, metadata) follow the model's
``extra_fields`` policy (see ``shipyard.signature``), in both request shapes:
``refuse`` answers 400 naming the field and the option, ``ignore`` drops them,
``passthrough`` drops them before the model and adds ``"passthrough": [...]``
to the response, one object per row in row order holding that row's extra
fields (``{}`` for a row without any; in the columns shape, an extra column
must hold one value per row). ``predictions`` is the same under every policy.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np

from shipyard.errors import InvalidInput
from shipyard.protocol.oip import parse_json
from shipyard.signature import Signature, column_array, records_to_columns
from shipyard.types import InferenceRequest, InferenceResponse, Tensor


class Decoded(NamedTuple):
    """A body's columns (not yet validated), and under ``passthrough`` the extra fields of each row."""

    columns: dict[str, Any]
    passthrough: list[dict[str, Any]] | None


def decode_request(body: bytes, signature: Signature) -> InferenceRequest:
    return decode_predict(body, signature)[0]


def decode_predict(body: bytes, signature: Signature) -> tuple[InferenceRequest, list[dict[str, Any]] | None]:
    """The request, and the extra fields of each row for ``encode_response`` (None unless passthrough)."""
    doc = parse_json(body)
    decoded = decode_document(doc, signature)
    request_id = doc.get("id")
    request = InferenceRequest(
        inputs=as_tensors(decoded.columns, signature), id=None if request_id is None else str(request_id)
    )
    return request, decoded.passthrough


def as_tensors(arrays: dict[str, Any], signature: Signature) -> list[Tensor]:
    """Decoded columns as tensors (the float fast path's block keeps its datatype)."""
    if signature.float_columns and all(type(v) is np.ndarray and v.dtype == np.float64 for v in arrays.values()):
        return [Tensor(name, v, "FP64") for name, v in arrays.items()]
    return [Tensor(name, _as_array(name, v)) for name, v in arrays.items()]


def decode_document(doc: Any, signature: Signature) -> Decoded:
    """The columns of a parsed ``{"instances": ...}`` or ``{"inputs": ...}`` document (not yet validated)."""
    if not isinstance(doc, dict):
        raise InvalidInput(
            'body must be a JSON object like {"instances": [...]} or {"inputs": {...}}',
            field="body",
            got=type(doc).__name__,
        )
    has_instances, has_inputs = "instances" in doc, "inputs" in doc
    if has_instances == has_inputs:
        raise InvalidInput(
            'body needs exactly one of "instances" (a list of rows) or "inputs" (columns)',
            field="body",
            got=", ".join(sorted(doc)) or "an empty object",
        )
    return _instances(doc["instances"], signature) if has_instances else _columns(doc["inputs"], signature)


def _as_array(name: str, value: Any) -> np.ndarray[Any, Any]:
    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, list) and not any(isinstance(x, (list, dict)) for x in value):
        return column_array(value)
    try:
        arr = np.asarray(value)
    except ValueError:
        raise InvalidInput.for_field(name, "a rectangular array", "ragged nested lists") from None
    if arr.dtype.kind == "O" and arr.ndim > 1:
        raise InvalidInput.for_field(name, "a rectangular array", "ragged nested lists")
    return arr


def _single_tensor(signature: Signature) -> str | None:
    if signature.format == "tensors" and len(signature.inputs) == 1:
        return signature.inputs[0].name
    return None


def _no_extra(signature: Signature, rows: int) -> list[dict[str, Any]] | None:
    """What rows without fields of their own pass through: nothing, unless the policy is passthrough."""
    return [{} for _ in range(rows)] if signature.extra_fields == "passthrough" else None


def _instances(instances: Any, signature: Signature) -> Decoded:
    if not isinstance(instances, list) or not instances:
        raise InvalidInput('"instances" must be a non-empty list of rows', field="instances")
    only = _single_tensor(signature)
    if only is not None and not isinstance(instances[0], Mapping):
        return Decoded({only: instances}, _no_extra(signature, len(instances)))
    if signature.float_columns:
        if signature.extra_fields == "refuse":
            fast = _float_records(instances, signature.input_names)
            if fast is not None:
                return Decoded(fast, None)
        else:
            with_extra = _float_records_with_extra(instances, signature)
            if with_extra is not None:
                return with_extra
    if all(isinstance(r, Mapping) for r in instances):
        return _records(instances, signature)
    if signature.format == "columns" and all(isinstance(r, list) for r in instances):
        names = signature.input_names
        for i, r in enumerate(instances):
            if len(r) != len(names):
                raise InvalidInput(
                    f"instance {i} has {len(r)} values but the model takes {len(names)} columns "
                    f"({', '.join(names)})",
                    field="instances",
                    expected=len(names),
                    got=len(r),
                )
        columns = {n: [r[j] for r in instances] for j, n in enumerate(names)}
        return Decoded(columns, _no_extra(signature, len(instances)))
    bad = next(i for i, r in enumerate(instances) if not isinstance(r, Mapping))
    raise InvalidInput(
        f"instance {bad} is a {type(instances[bad]).__name__}; expected an object with the fields "
        f"{', '.join(signature.input_names)}",
        field="instances",
    )


def _float_records(instances: list[Any], names: list[str]) -> dict[str, Any] | None:
    """Rows of plain numbers with exactly the signature's fields, as one float block (views per column).

    Anything else (a missing or extra field, a bool, a string, null) returns None and takes
    the general path, whose errors name the field and value.
    """
    keys = set(names)
    rows = []
    for r in instances:
        if type(r) is not dict or r.keys() != keys:
            return None
        row = [r[k] for k in names]
        for v in row:
            t = type(v)
            if t is not float and t is not int:
                return None
        rows.append(row)
    block = np.array(rows, dtype=np.float64)
    return {name: block[:, i] for i, name in enumerate(names)}


def _float_records_with_extra(instances: list[Any], signature: Signature) -> Decoded | None:
    """``_float_records`` for ignore/passthrough models: rows may carry fields beside the numbers."""
    names = signature.input_names
    keys = set(names)
    width = len(names)
    keep = signature.extra_fields == "passthrough"
    extra: list[dict[str, Any]] = []
    rows = []
    for r in instances:
        if type(r) is not dict or not r.keys() >= keys:
            return None
        row = [r[k] for k in names]
        for v in row:
            t = type(v)
            if t is not float and t is not int:
                return None
        rows.append(row)
        if keep:
            extra.append({k: v for k, v in r.items() if k not in keys} if len(r) > width else {})
    block = np.array(rows, dtype=np.float64)
    return Decoded({name: block[:, i] for i, name in enumerate(names)}, extra if keep else None)


def _records(instances: list[Mapping[str, Any]], signature: Signature) -> Decoded:
    """Rows as columns, their fields beside the inputs refused, dropped or kept by ``extra_fields``."""
    if signature.extra_fields == "refuse":
        signature.split_extra(instances[0])  # an extra field in row 0 is named as such, before its values
        try:
            columns = records_to_columns(instances)
        except InvalidInput as exc:
            name = exc.field
            if name is None or signature.input(name) is not None:
                raise
            # rows that differ by a field the model does not take: that field is the news
            at = next((i for i, r in enumerate(instances) if name in r), 0)
            raise signature.unexpected_input(
                name, instances[at], record=True, lead=f"instance {at} has an extra field '{name}'"
            ) from None
        return Decoded(columns, None)  # every row has row 0's fields, which are all inputs
    keep = signature.extra_fields == "passthrough"
    inputs: list[Mapping[str, Any]] = []
    extra: list[dict[str, Any]] = []
    for r in instances:
        split = signature.split_extra(r)
        inputs.append(split[0])
        if keep:
            extra.append(split[1])
    return Decoded(records_to_columns(inputs), extra if keep else None)


def _columns(inputs: Any, signature: Signature) -> Decoded:
    if isinstance(inputs, Mapping):
        columns, extra = signature.split_extra(inputs)
        for k, v in columns.items():
            if not isinstance(v, list):
                raise InvalidInput.for_field(str(k), "a list of values (one per row)", type(v).__name__)
        if signature.extra_fields != "passthrough":
            return Decoded(columns, None)
        n = len(next(iter(columns.values()))) if columns else 0
        for k, v in extra.items():
            if not isinstance(v, list) or len(v) != n:
                got = f"{len(v)} values" if isinstance(v, list) else type(v).__name__
                raise InvalidInput(
                    f"extra field '{k}': expected a list of {n} values (one per row, as the inputs have), got {got}",
                    field=str(k),
                    expected=f"{n} values",
                    got=got,
                )
        return Decoded(columns, [{k: v[i] for k, v in extra.items()} for i in range(n)])
    only = _single_tensor(signature)
    if only is not None and isinstance(inputs, list):
        return Decoded({only: inputs}, _no_extra(signature, len(inputs)))
    raise InvalidInput(
        '"inputs" must be an object mapping each input name to a list of values',
        field="inputs",
        got=type(inputs).__name__,
    )


def encode_response(response: InferenceResponse, passthrough: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The ``/v1`` answer; ``passthrough`` (from ``decode_predict``) adds each row's extra fields."""
    doc: dict[str, Any] = {
        "model_name": response.model_name,
        "model_version": response.model_version,
        "id": response.id,
        "predictions": predictions({t.name: t.data for t in response.outputs}),
    }
    if passthrough is not None:
        doc["passthrough"] = passthrough
    return doc


def predictions(outputs: Mapping[str, np.ndarray[Any, Any]]) -> list[Any]:
    """One JSON value per row: the value itself for a one-output model, else an object of outputs."""
    columns = {name: _to_py(a) for name, a in outputs.items()}
    if len(columns) == 1:
        return next(iter(columns.values()))
    n = len(next(iter(columns.values())))
    return [{k: v[i] for k, v in columns.items()} for i in range(n)]


def _to_py(arr: np.ndarray[Any, Any]) -> list[Any]:
    if arr.dtype.kind in ("O", "S"):
        return [x.decode("utf-8", "replace") if isinstance(x, bytes) else x for x in arr.tolist()]
    return arr.tolist()  # type: ignore[no-any-return]
