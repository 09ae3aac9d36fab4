"""MLflow's scoring protocol (what ``mlflow models serve`` answers on ``/invocations``).

So clients written for an MLflow model server work against shipyard unchanged.
Requests are ``application/json`` (charset UTF-8 only) holding exactly one of

* ``dataframe_split``: ``{"columns": [...], "data": [[...], ...]}`` (pandas' split
  orient; ``index`` is ignored; without ``columns`` values go to the signature's
  inputs in order);
* ``dataframe_records``: ``[{"col": value, ...}, ...]`` (pandas' records orient);
* ``instances``: rows, as on ``/v1/models/NAME:predict``;
* ``inputs``: columns ``{"col": [...]}``, or rows ``[[...], ...]``;

plus an optional ``params`` object, or ``text/csv`` with a header row. The
response is ``{"predictions": [...]}``, one entry per row (an object of outputs
for a model with several). Everything after decoding (the signature check and
its messages) is shared with the simple JSON API.
"""

from __future__ import annotations

import csv
import io
import math
from typing import Any

from shipyard.errors import InvalidInput, UnsupportedMediaType
from shipyard.protocol.json_body import parse_json
from shipyard.protocol.simple import as_tensors, decode_document, predictions
from shipyard.signature import Signature
from shipyard.types import InferenceRequest, InferenceResponse

JSON = "application/json"
CSV = "text/csv"
FORMATS = ("dataframe_split", "dataframe_records", "instances", "inputs")
PARAMS = "params"


def decode_request(body: bytes, content_type: str, signature: Signature) -> InferenceRequest:
    """An MLflow scoring request as a shipyard request; ``InvalidInput`` names what is wrong."""
    mime = _media_type(content_type)
    if mime == CSV:
        columns = decode_document({"inputs": _csv_columns(body, signature)}, signature).columns
    else:
        columns = _json_columns(parse_json(body), signature)
    return InferenceRequest(inputs=as_tensors(columns, signature))


def encode_response(response: InferenceResponse) -> dict[str, Any]:
    return {"predictions": predictions({t.name: t.data for t in response.outputs})}


def _media_type(content_type: str) -> str:
    mime, *params = (part.strip() for part in content_type.split(";"))
    mime = mime.lower() or JSON  # as on every JSON route: an undeclared body is read as JSON
    if mime not in (JSON, CSV):
        raise UnsupportedMediaType(
            f"content type '{mime}' is not supported on /invocations; send application/json or text/csv",
            field="Content-Type",
            expected=f"{JSON} or {CSV}",
            got=mime,
        )
    for param in params:
        key, _, value = param.partition("=")
        if key.strip().lower() != "charset":
            raise UnsupportedMediaType(
                f"content type parameter '{key.strip()}' is not supported; only charset=utf-8 is",
                field="Content-Type",
                got=content_type,
            )
        if value.strip().strip('"').lower() not in ("utf-8", "utf8"):
            raise UnsupportedMediaType(
                f"charset '{value.strip()}' is not supported; send UTF-8",
                field="Content-Type",
                expected="charset=utf-8",
                got=value.strip(),
            )
    return mime


def _json_columns(doc: Any, signature: Signature) -> dict[str, Any]:
    if not isinstance(doc, dict):
        raise InvalidInput(
            f"body must be a JSON object with one of {', '.join(FORMATS)}", field="body", got=type(doc).__name__
        )
    found = [k for k in FORMATS if k in doc]
    unknown = sorted(set(doc) - {*FORMATS, PARAMS})
    if len(found) != 1 or unknown:
        got = ", ".join(sorted(doc)) or "an empty object"
        raise InvalidInput(
            f"body needs exactly one of {', '.join(FORMATS)} (and optionally params); got {got}",
            field="body",
            got=got,
        )
    params = doc.get(PARAMS)
    if params not in (None, {}):
        raise InvalidInput(
            "params are not supported: shipyard models predict from their inputs alone; "
            "send the request without 'params'",
            field=PARAMS,
            got=params if not isinstance(params, (dict, list)) else type(params).__name__,
        )
    key = found[0]
    value = doc[key]
    if key == "dataframe_split":
        return decode_document({"inputs": _split(value, signature)}, signature).columns
    if key == "inputs" and (isinstance(value, dict) or (signature.format == "tensors" and len(signature.inputs) == 1)):
        return decode_document({"inputs": value}, signature).columns  # columns, or one tensor's values
    if key in ("dataframe_records", "instances", "inputs"):
        if not isinstance(value, list) or not value:
            raise InvalidInput(f"'{key}' must be a non-empty list of rows", field=key, got=type(value).__name__)
        try:
            return decode_document({"instances": value}, signature).columns
        except InvalidInput as exc:
            if exc.field == "instances":  # the caller called them by MLflow's name
                exc.field = key
                exc.message = exc.message.replace('"instances"', f"'{key}'")
            raise
    raise AssertionError(key)  # pragma: no cover - FORMATS is exhaustive


def _split(value: Any, signature: Signature) -> dict[str, Any]:
    if not isinstance(value, dict) or not isinstance(value.get("data"), list):
        raise InvalidInput(
            "'dataframe_split' must be an object with 'data' (a list of rows) and 'columns'",
            field="dataframe_split",
            got=type(value).__name__,
        )
    data: list[Any] = value["data"]
    columns = value.get("columns", signature.input_names)
    if not isinstance(columns, list) or not all(isinstance(c, str) for c in columns):
        raise InvalidInput("'dataframe_split.columns' must be a list of column names", field="dataframe_split")
    if not data:
        raise InvalidInput("'dataframe_split.data' must have at least one row", field="dataframe_split")
    for i, row in enumerate(data):
        if not isinstance(row, list) or len(row) != len(columns):
            raise InvalidInput(
                f"dataframe_split row {i} has {len(row) if isinstance(row, list) else 'not a list of'} values "
                f"but there are {len(columns)} columns ({', '.join(columns)})",
                field="dataframe_split",
                expected=len(columns),
                got=len(row) if isinstance(row, list) else type(row).__name__,
            )
    return {c: [row[j] for row in data] for j, c in enumerate(columns)}


def _csv_columns(body: bytes, signature: Signature) -> dict[str, Any]:
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"CSV body is not UTF-8: {exc}", field="body") from None
    try:
        rows = list(csv.reader(io.StringIO(text, newline="")))  # newline="": the csv module reads line ends
    except csv.Error as exc:
        raise InvalidInput(f"CSV body is not valid CSV: {exc}", field="body") from None
    if len(rows) < 2:
        raise InvalidInput("CSV body needs a header row and at least one data row", field="body",
                           got=f"{len(rows)} rows")
    header, data = rows[0], [r for r in rows[1:] if r]
    columns: dict[str, Any] = {}
    for j, name in enumerate(header):
        values = []
        for i, row in enumerate(data):
            if len(row) != len(header):
                raise InvalidInput(
                    f"CSV row {i + 1} has {len(row)} values but the header has {len(header)}",
                    field="body",
                    expected=len(header),
                    got=len(row),
                )
            values.append(_csv_value(name, row[j], signature))
        columns[name] = values
    return columns


def _csv_value(name: str, text: str, signature: Signature) -> Any:
    """A CSV field as the signature's datatype for that column wants it (text stays text)."""
    spec = signature.input(name)
    datatype = spec.datatype if spec is not None else "BYTES"
    try:
        if datatype.startswith("FP"):
            return math.nan if text.strip() == "" else float(text)
        if datatype.startswith(("INT", "UINT")):
            return int(text)
        if datatype == "BOOL":
            lowered = text.strip().lower()
            if lowered in ("true", "1"):
                return True
            if lowered in ("false", "0"):
                return False
            raise ValueError(text)
    except ValueError:
        raise InvalidInput.for_field(name, f"a {datatype} value", repr(text)[:80], "in the CSV body") from None
    return text
