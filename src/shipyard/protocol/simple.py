"""The simple JSON API (``POST /v1/models/{name}:predict``) for humans and curl.

Two request shapes:

* records: ``{"instances": [{"col": 1.0, ...}, ...]}`` (or, for a model with one
  tensor input, ``{"instances": [[...], [...]]}``);
* columns: ``{"inputs": {"col": [...], ...}}`` (or ``{"inputs": [[...]]}`` for
  one tensor input).

Response: ``{"model_name", "model_version", "id", "predictions": [...]}`` where each
prediction is a value when the model has one output and an object otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from shipyard.errors import InvalidInput
from shipyard.protocol.oip import parse_json
from shipyard.signature import Signature, column_array, records_to_columns
from shipyard.types import InferenceRequest, InferenceResponse, Tensor


def decode_request(body: bytes, signature: Signature) -> InferenceRequest:
    doc = parse_json(body)
    arrays = decode_document(doc, signature)
    request_id = doc.get("id")
    return InferenceRequest(inputs=as_tensors(arrays, signature), id=None if request_id is None else str(request_id))


def as_tensors(arrays: dict[str, Any], signature: Signature) -> list[Tensor]:
    """Decoded columns as tensors (the float fast path's block keeps its datatype)."""
    if signature.float_columns and all(type(v) is np.ndarray and v.dtype == np.float64 for v in arrays.values()):
        return [Tensor(name, v, "FP64") for name, v in arrays.items()]
    return [Tensor(name, _as_array(name, v)) for name, v in arrays.items()]


def decode_document(doc: Any, signature: Signature) -> dict[str, Any]:
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


def _instances(instances: Any, signature: Signature) -> dict[str, Any]:
    if not isinstance(instances, list) or not instances:
        raise InvalidInput('"instances" must be a non-empty list of rows', field="instances")
    only = _single_tensor(signature)
    if only is not None and not isinstance(instances[0], Mapping):
        return {only: instances}
    if signature.float_columns:
        fast = _float_records(instances, signature.input_names)
        if fast is not None:
            return fast
    if all(isinstance(r, Mapping) for r in instances):
        return records_to_columns(instances)
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
        return {n: [r[j] for r in instances] for j, n in enumerate(names)}
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


def _columns(inputs: Any, signature: Signature) -> dict[str, Any]:
    if isinstance(inputs, Mapping):
        for k, v in inputs.items():
            if not isinstance(v, list):
                raise InvalidInput.for_field(str(k), "a list of values (one per row)", type(v).__name__)
        return dict(inputs)
    only = _single_tensor(signature)
    if only is not None and isinstance(inputs, list):
        return {only: inputs}
    raise InvalidInput(
        '"inputs" must be an object mapping each input name to a list of values',
        field="inputs",
        got=type(inputs).__name__,
    )


def encode_response(response: InferenceResponse) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "model_name": response.model_name,
        "model_version": response.model_version,
        "id": response.id,
        "predictions": predictions({t.name: t.data for t in response.outputs}),
    }
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
