"""Malformed requests against a real `shipyard serve`: each gets a useful JSON error, none hurts the server.

Every row is (id, method, path, headers, body, expected status, a substring of the error
message). The substring is the point of the row: it shows the message names the field at
fault and/or what was expected versus what arrived, not merely that something failed.
"""

from __future__ import annotations

import gzip
import math
import struct
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import orjson
import pytest

from shipyard import errors
from shipyard.demo import FEATURES, train_demo_model
from shipyard.protocol.status import STATUSES
from shipyard.testing import RunningServer

pytestmark = pytest.mark.integration

V2 = "/v2/models/demo/infer"
V1 = "/v1/models/demo:predict"
LIMIT = 65536  # the demo_server's --max-body-bytes
ROWS = [[5.1, 3.5, 1.4, 0.2], [6.3, 3.3, 6.0, 2.5], [5.8, 2.7, 4.1, 1.0]]
COLUMNS = {f: [r[i] for r in ROWS] for i, f in enumerate(FEATURES)}
RECORDS = [dict(zip(FEATURES, r, strict=True)) for r in ROWS]
BINARY = "application/octet-stream"


class Streamed(bytes):
    """A body sent chunked, without Content-Length, so the server cannot refuse it up front."""


def tensor(name: str, data: Any, datatype: str = "FP64", shape: list[int] | None = None) -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": [len(data)] if shape is None else shape, "data": data}


def v2(drop: tuple[str, ...] = (), add: tuple[dict[str, Any], ...] = (), **replace: dict[str, Any]) -> bytes:
    """The good three-row V2 JSON body, with inputs dropped, added or replaced by name."""
    inputs = [replace.get(f, tensor(f, COLUMNS[f])) for f in FEATURES if f not in drop]
    return orjson.dumps({"inputs": [*inputs, *add]})


def v1(doc: Any) -> bytes:
    return orjson.dumps(doc)


def fp64(*values: float) -> bytes:
    return np.array(values, dtype="<f8").tobytes()


def binary(
    raw: dict[str, tuple[str, bytes]],
    *,
    declared: int | None = None,
    trailing: bytes = b"",
    header_length: str | None = None,
) -> tuple[dict[str, str], bytes]:
    """Headers and body of the binary tensor extension, as tritonclient sends it.

    ``raw`` maps an input to (datatype, bytes) sent as binary for its three rows; the
    other inputs stay JSON. ``declared`` overrides the first binary input's
    binary_data_size, ``trailing`` appends bytes, ``header_length`` overrides the header.
    """
    inputs: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for f in FEATURES:
        if f not in raw:
            inputs.append(tensor(f, COLUMNS[f]))
            continue
        datatype, blob = raw[f]
        size = declared if declared is not None and not blobs else len(blob)
        inputs.append({"name": f, "datatype": datatype, "shape": [3], "parameters": {"binary_data_size": size}})
        blobs.append(blob)
    header = orjson.dumps({"inputs": inputs})
    length = header_length if header_length is not None else str(len(header))
    return {"Inference-Header-Content-Length": length, "Content-Type": BINARY}, header + b"".join(blobs) + trailing


def bytes_elements(*items: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(b)) + b for b in items)


GOOD_V2 = v2()
JSON = {"Content-Type": "application/json"}
GZIP = {"Content-Encoding": "gzip"}
NAN_BODY = GOOD_V2.replace(b"5.1", b"NaN", 1)
assert NAN_BODY != GOOD_V2

# fmt: off
CASES: list[tuple[str, str, str, dict[str, str], bytes, int, str]] = [
    # -- wrong types ------------------------------------------------------------------
    ("v2-string-in-fp64", "POST", V2, JSON, v2(sepal_length=tensor("sepal_length", ["5.1", 6.3, 5.8])), 400,
     "input 'sepal_length': expected numbers for datatype FP64, got string '5.1'"),
    ("v2-bool-in-fp64", "POST", V2, JSON, v2(sepal_width=tensor("sepal_width", [3.5, True, 2.7])), 400,
     "input 'sepal_width': expected numbers for datatype FP64, got true"),
    ("v2-bool-tensor-for-fp64-column", "POST", V2, JSON,
     v2(petal_length=tensor("petal_length", [True, False, True], "BOOL")), 400,
     "input 'petal_length': expected FP64[-1], got BOOL[3]"),
    ("v2-null-in-fp64", "POST", V2, JSON, v2(petal_width=tensor("petal_width", [0.2, None, 1.0])), 400,
     "input 'petal_width': expected numbers for datatype FP64, got null"),
    ("v2-nested-list-too-many-values", "POST", V2, JSON,
     v2(sepal_length=tensor("sepal_length", [[5.1, 1.0], [6.3, 1.0]], shape=[3])), 400,
     "input 'sepal_length': expected 3 values for its shape, got 4 values"),
    ("v1-string-in-fp64", "POST", V1, JSON, v1({"instances": [{**RECORDS[0], "sepal_length": "wide"}]}), 400,
     "input 'sepal_length': expected FP64[-1], got strings such as 'wide'"),
    ("v1-bool-among-numbers", "POST", V1, JSON,
     v1({"instances": [RECORDS[0], {**RECORDS[1], "sepal_width": True}]}), 400,
     "input 'sepal_width': expected FP64, got boolean True at position 1"),
    ("v1-null", "POST", V1, JSON, v1({"inputs": {**COLUMNS, "petal_length": [None, 6.0, 4.1]}}), 400,
     "input 'petal_length': expected FP64, got null at position 0"),
    ("v1-nested-list-in-row", "POST", V1, JSON, v1({"instances": [{**RECORDS[0], "petal_width": [0.2, 0.3]}]}), 400,
     "input 'petal_width': expected one scalar per row, got list in instance 0"),
    # -- missing and extra inputs -----------------------------------------------------
    ("v2-missing-input", "POST", V2, JSON, v2(drop=("petal_width",)), 400,
     "missing input 'petal_width': expected FP64[-1]"),
    ("v2-extra-input", "POST", V2, JSON, v2(add=(tensor("colour", [1.0, 2.0, 3.0]),)), 400,
     "unexpected input 'colour': this model takes 'sepal_length', 'sepal_width', 'petal_length', 'petal_width'"),
    ("v2-duplicate-input", "POST", V2, JSON, v2(add=(tensor("sepal_length", [1.0, 2.0, 3.0]),)), 400,
     "input 'sepal_length' appears twice"),
    ("v1-missing-column", "POST", V1, JSON,
     v1({"inputs": {k: v for k, v in COLUMNS.items() if k != "sepal_width"}}), 400,
     "missing input 'sepal_width'"),
    ("v1-extra-column", "POST", V1, JSON, v1({"instances": [{**RECORDS[0], "colour": "blue"}]}), 400,
     "unexpected input 'colour'"),
    # -- shapes -------------------------------------------------------------------------
    ("v2-shape-vs-data-count", "POST", V2, JSON,
     v2(sepal_length=tensor("sepal_length", COLUMNS["sepal_length"], shape=[4])), 400,
     "input 'sepal_length': expected 4 values for its shape, got 3 values"),
    ("v2-2d-where-1d-expected", "POST", V2, JSON,
     v2(sepal_width=tensor("sepal_width", [3.5, 3.3, 2.7, 3.0, 3.1, 2.9], shape=[3, 2])), 400,
     "input 'sepal_width': expected shape [-1], got shape [3, 2]"),
    ("v2-negative-dimension", "POST", V2, JSON, v2(sepal_width=tensor("sepal_width", [], shape=[-3])), 400,
     "input 'sepal_width' needs a 'shape' list of non-negative integers, got [-3]"),
    ("v2-different-row-counts", "POST", V2, JSON, v2(petal_length=tensor("petal_length", [1.4, 6.0])), 400,
     "input 'petal_length' has 2 rows but 'sepal_length' has 3"),
    ("v2-zero-rows", "POST", V2, JSON, orjson.dumps({"inputs": [tensor(f, []) for f in FEATURES]}), 400,
     "input 'sepal_length': expected at least one row, got 0 rows"),
    ("v1-zero-rows", "POST", V1, JSON, v1({"inputs": dict.fromkeys(FEATURES, [])}), 400,
     "input 'sepal_length': expected at least one row, got 0 rows"),
    ("v1-list-row-too-short", "POST", V1, JSON, v1({"instances": [ROWS[0][:3]]}), 400,
     "instance 0 has 3 values but the model takes 4 columns (sepal_length, sepal_width, petal_length, petal_width)"),
    # -- NaN and infinity ---------------------------------------------------------------
    ("v2-nan-literal", "POST", V2, JSON, NAN_BODY, 400, "request body is not valid JSON"),
    ("v1-infinity-literal", "POST", V1, JSON, b'{"instances": [{"sepal_length": Infinity}]}', 400,
     "request body is not valid JSON"),
    ("binary-nan", "POST", V2, *binary({"sepal_length": ("FP64", fp64(5.1, math.nan, 5.8))}), 400,
     "input 'sepal_length': expected finite numbers, got nan at position 1"),
    ("binary-infinity", "POST", V2, *binary({"petal_width": ("FP64", fp64(-math.inf, 2.5, 1.0))}), 400,
     "input 'petal_width': expected finite numbers, got -inf at position 0"),
    # -- truncated or inconsistent binary tensors ----------------------------------------
    ("binary-size-beyond-body", "POST", V2, *binary({"sepal_length": ("FP64", fp64(5.1, 6.3))}, declared=24), 400,
     "input 'sepal_length' declares binary_data_size 24 but only 16 bytes remain in the body"),
    ("binary-size-wrong-for-shape", "POST", V2, *binary({"sepal_width": ("FP64", fp64(3.5, 3.3, 2.7)[:20])}), 400,
     "input 'sepal_width' binary data: expected 24 bytes of FP64 for its shape, got 20 bytes"),
    ("header-length-beyond-body", "POST", V2, *binary({"sepal_length": ("FP64", fp64(5.1, 6.3, 5.8))},
                                                         header_length="99999"), 400,
     "Inference-Header-Content-Length is 99999 but the body has"),
    ("header-length-not-a-number", "POST", V2, *binary({"sepal_length": ("FP64", fp64(5.1, 6.3, 5.8))},
                                                          header_length="12abc"), 400,
     "Inference-Header-Content-Length must be a whole number, got '12abc'"),
    ("header-length-cuts-the-json", "POST", V2, *binary({"sepal_length": ("FP64", fp64(5.1, 6.3, 5.8))},
                                                           header_length="40"), 400,
     "inference request header is not valid JSON"),
    ("binary-leftover-bytes", "POST", V2, *binary({"sepal_length": ("FP64", fp64(5.1, 6.3, 5.8))}, trailing=b"\0" * 8),
     400, "8 bytes of binary data follow the inputs but no input claims them"),
    # -- datatypes ------------------------------------------------------------------------
    ("v2-unknown-datatype", "POST", V2, JSON,
     v2(sepal_length=tensor("sepal_length", COLUMNS["sepal_length"], "FLOAT64")), 400,
     "input 'sepal_length': unknown datatype 'FLOAT64'; expected one of BOOL, UINT8"),
    ("v2-bytes-json-for-fp64", "POST", V2, JSON, v2(sepal_width=tensor("sepal_width", ["3.5", "3.3", "2.7"], "BYTES")),
     400, "input 'sepal_width': expected FP64, got str '3.5' at position 0"),
    ("v2-bytes-binary-for-fp64", "POST", V2, *binary({"petal_length": ("BYTES", bytes_elements(b"1.4", b"6", b"x"))}),
     400, "input 'petal_length': expected FP64, got str '1.4' at position 0"),
    # -- content type and encoding --------------------------------------------------------
    ("v2-text-plain", "POST", V2, {"Content-Type": "text/plain"}, GOOD_V2, 415,
     "content type 'text/plain' is not supported here; send JSON with 'Content-Type: application/json'"),
    ("v2-form-urlencoded", "POST", V2, {"Content-Type": "application/x-www-form-urlencoded"}, b"inputs=1", 415,
     "content type 'application/x-www-form-urlencoded' is not supported"),
    ("v1-text-plain", "POST", V1, {"Content-Type": "text/plain; charset=utf-8"}, v1({"instances": RECORDS}), 415,
     "content type 'text/plain' is not supported"),
    ("v2-octet-stream-without-header-length", "POST", V2, {"Content-Type": BINARY}, GOOD_V2, 415,
     "(or the binary tensor extension with Inference-Header-Content-Length)"),
    ("gzip-that-is-not-gzip", "POST", V2, {**JSON, **GZIP}, GOOD_V2, 400, "body is not valid gzip data"),
    ("gzip-truncated", "POST", V2, {**JSON, **GZIP}, gzip.compress(GOOD_V2)[:-12], 400,
     "body is not valid gzip data: the compressed stream is truncated"),
    ("unknown-content-encoding", "POST", V2, {**JSON, "Content-Encoding": "br"}, GOOD_V2, 415,
     "content encoding 'br' is not supported; send gzip, deflate or identity"),
    # -- size limit -----------------------------------------------------------------------
    ("too-large-with-content-length", "POST", V2, JSON, b" " * (LIMIT + 1) + GOOD_V2, 413,
     f"exceeds the limit of {LIMIT} bytes (raise it with --max-body-bytes"),
    ("too-large-streamed", "POST", V2, JSON, Streamed(b" " * (LIMIT + 1) + GOOD_V2), 413,
     f"exceeds the limit of {LIMIT} bytes"),
    ("too-large-once-gunzipped", "POST", V1, {**JSON, **GZIP}, gzip.compress(b" " * (2 * LIMIT) + GOOD_V2), 413,
     f"exceeds the limit of {LIMIT} bytes"),
    # -- unknown models, versions, aliases ------------------------------------------------
    ("v2-unknown-model", "POST", "/v2/models/nope/infer", JSON, GOOD_V2, 404, "model 'nope' is not served here"),
    ("v1-unknown-model", "POST", "/v1/models/nope:predict", JSON, v1({"instances": RECORDS}), 404,
     "model 'nope' is not served here"),
    ("unknown-model-metadata", "GET", "/v2/models/nope", {}, b"", 404, "model 'nope' is not served here"),
    ("v2-unknown-version", "POST", "/v2/models/demo/versions/7/infer", JSON, GOOD_V2, 404,
     "model 'demo' has no version 7"),
    ("unknown-version-ready", "GET", "/v2/models/demo/versions/7/ready", {}, b"", 404, "model 'demo' has no version 7"),
    ("v2-unknown-alias", "POST", "/v2/models/demo@staging/infer", JSON, GOOD_V2, 404,
     "model 'demo' has no alias 'staging'"),
    ("v1-unknown-alias", "POST", "/v1/models/demo@staging:predict", JSON, v1({"instances": RECORDS}), 404,
     "model 'demo' has no alias 'staging'"),
    ("invalid-model-name", "POST", "/v2/models/de%20mo/infer", JSON, GOOD_V2, 400,
     "invalid model name 'de mo': use letters, digits"),
    # -- not JSON, or not the JSON expected ---------------------------------------------
    ("v2-invalid-json", "POST", V2, JSON, b'{"inputs": [', 400, "request body is not valid JSON"),
    ("v1-invalid-json", "POST", V1, JSON, b"{'instances': []}", 400, "request body is not valid JSON"),
    ("v2-not-utf8", "POST", V2, JSON, b'{"inputs": "\xff"}', 400, "request body is not valid JSON"),
    ("v2-json-not-an-object", "POST", V2, JSON, b"[1, 2, 3]", 400, "inference request must be a JSON object, got list"),
    ("v1-json-not-an-object", "POST", V1, JSON, b'"hello"', 400,
     'body must be a JSON object like {"instances": [...]}'),
    ("v2-empty-inputs", "POST", V2, JSON, b'{"inputs": []}', 400, "inference request needs a non-empty 'inputs' list"),
    ("v2-input-without-name", "POST", V2, JSON,
     orjson.dumps({"inputs": [{"datatype": "FP64", "shape": [1], "data": [1]}]}), 400,
     "inputs[0] needs a 'name' string"),
    ("v1-neither-instances-nor-inputs", "POST", V1, JSON, v1({"rows": RECORDS}), 400,
     'body needs exactly one of "instances" (a list of rows) or "inputs" (columns)'),
    ("v1-both-instances-and-inputs", "POST", V1, JSON, v1({"instances": RECORDS, "inputs": COLUMNS}), 400,
     'body needs exactly one of "instances"'),
    ("v1-empty-instances", "POST", V1, JSON, v1({"instances": []}), 400,
     '"instances" must be a non-empty list of rows'),
    ("v1-rows-lack-a-key", "POST", V1, JSON,
     v1({"instances": [RECORDS[0], {k: v for k, v in RECORDS[1].items() if k != "petal_width"}]}), 400,
     "instance 1 lacks 'petal_width'; every row needs the same fields as row 0"),
    ("v1-rows-with-an-extra-key", "POST", V1, JSON, v1({"instances": [RECORDS[0], {**RECORDS[1], "note": "x"}]}), 400,
     "instance 1 has an extra field 'note'"),
    ("v2-unknown-output", "POST", V2, JSON, v2().replace(b"]}", b'], "outputs": [{"name": "probability"}]}'), 400,
     "unknown output 'probability'; this model returns predict"),
    # -- routing ------------------------------------------------------------------------
    ("wrong-method-on-infer", "GET", V2, {}, b"", 405, "GET is not allowed on /v2/models/demo/infer"),
    ("wrong-method-on-predict", "PUT", V1, JSON, v1({"instances": RECORDS}), 405,
     "PUT is not allowed on /v1/models/demo:predict"),
    ("unknown-route", "POST", "/v2/models/demo/predict", JSON, GOOD_V2, 404,
     "no route for POST /v2/models/demo/predict"),
]
# fmt: on


def send(client: httpx.Client, method: str, path: str, headers: dict[str, str], body: bytes) -> httpx.Response:
    if isinstance(body, Streamed):
        content: Any = (bytes(body[i : i + 16384]) for i in range(0, len(body), 16384))
    else:
        content = body
    return client.request(method, path, headers=headers, content=content)


@pytest.fixture(scope="module")
def client(demo_server: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=demo_server.url, timeout=30) as c:
        yield c


def test_the_table_covers_both_apis_and_every_error_status() -> None:
    assert len(CASES) >= 30
    assert len({c[0] for c in CASES}) == len(CASES), "case ids must be unique"
    assert {c[5] for c in CASES} == {400, 404, 405, 413, 415}


@pytest.mark.parametrize(
    ("method", "path", "headers", "body", "status", "message"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_malformed_request_gets_a_useful_json_error(
    client: httpx.Client, method: str, path: str, headers: dict[str, str], body: bytes, status: int, message: str
) -> None:
    r = send(client, method, path, headers, body)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    assert r.headers.get("x-request-id"), "every response carries a request id"
    doc = r.json()
    error = doc["error"]
    assert isinstance(error, str)
    assert message in error
    if status in (400, 413, 415) or "kind" in doc:  # only a wrong method's answer lacks a kind
        assert STATUSES[doc["kind"]].http == status
    if "type" in doc:  # a shipyard error's class (absent from the no-route answer, which no error raised)
        assert getattr(errors, doc["type"]).kind == doc["kind"]


def test_server_still_answers_correctly_after_every_malformed_request(
    demo_server: RunningServer, client: httpx.Client
) -> None:
    # Send the whole table again here, so this holds however the tests above were selected.
    for _, method, path, headers, body, status, _ in CASES:
        assert send(client, method, path, headers, body).status_code == status
    model, X, _ = train_demo_model()
    rows = X.iloc[::5]
    expected = model.predict(rows).tolist()
    good = {"inputs": [tensor(c, rows[c].tolist()) for c in FEATURES]}
    r = client.post(V2, json=good)
    assert r.status_code == 200, r.text
    assert r.json()["outputs"][0]["data"] == expected
    r1 = client.post(V1, json={"instances": rows.to_dict(orient="records")})
    assert r1.json()["predictions"] == expected
    assert demo_server.process.poll() is None, demo_server.log()
