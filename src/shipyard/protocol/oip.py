"""Open Inference Protocol (KServe V2) REST codec: JSON tensors and the binary extension.

Decoding turns a request body into an ``InferenceRequest`` of NumPy arrays;
encoding turns an ``InferenceResponse`` back into bytes. With the binary tensor
extension (what tritonclient sends by default) the body is a JSON header of
``Inference-Header-Content-Length`` bytes followed by the raw tensors, in input
order, for every input whose parameters carry ``binary_data_size``. BYTES
elements are each a 4-byte little-endian length followed by the bytes.
"""

from __future__ import annotations

import math
import struct
from typing import Any

import numpy as np
import orjson

from shipyard.errors import InvalidInput
from shipyard.protocol.json_body import parse_json as parse_json  # the one JSON parser, re-exported
from shipyard.types import InferenceRequest, InferenceResponse, Tensor, numpy_dtype

HEADER_LENGTH = "inference-header-content-length"


def parse_header_length(value: str | None, body_len: int) -> int | None:
    """Validate the Inference-Header-Content-Length header against the body."""
    if value is None:
        return None
    try:
        n = int(value)
    except ValueError:
        raise InvalidInput(
            f"Inference-Header-Content-Length must be a whole number, got '{value}'",
            field="Inference-Header-Content-Length",
            got=value,
        ) from None
    if n <= 0 or n > body_len:
        raise InvalidInput(
            f"Inference-Header-Content-Length is {n} but the body has {body_len} bytes",
            field="Inference-Header-Content-Length",
            expected=f"1..{body_len}",
            got=n,
        )
    return n


def decode_request(body: bytes, header_length: int | None) -> InferenceRequest:
    """Decode a V2 infer request (JSON, or JSON header plus binary tensors)."""
    head = body if header_length is None else body[:header_length]
    binary = memoryview(body)[header_length:] if header_length is not None else memoryview(b"")
    doc = parse_json(head, "inference request header" if header_length else "request body")
    if not isinstance(doc, dict):
        raise InvalidInput(
            f"inference request must be a JSON object, got {type(doc).__name__}", field="body"
        )
    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise InvalidInput(
            "inference request needs a non-empty 'inputs' list", field="inputs", got=_kind(raw_inputs)
        )
    offset = 0
    inputs: list[Tensor] = []
    seen: set[str] = set()
    for i, item in enumerate(raw_inputs):
        tensor, used = _decode_input(i, item, binary, offset)
        if tensor.name in seen:
            raise InvalidInput(f"input '{tensor.name}' appears twice", field=tensor.name)
        seen.add(tensor.name)
        offset += used
        inputs.append(tensor)
    if offset != len(binary):
        raise InvalidInput(
            f"{len(binary) - offset} bytes of binary data follow the inputs but no input claims them "
            "(check each input's binary_data_size)",
            field="body",
        )
    request_id = doc.get("id")
    params = doc.get("parameters") or {}
    if not isinstance(params, dict):
        raise InvalidInput("'parameters' must be an object", field="parameters", got=_kind(params))
    outputs, output_params = _decode_outputs(doc.get("outputs"))
    return InferenceRequest(
        inputs=inputs,
        id=str(request_id) if request_id is not None else None,
        outputs=outputs,
        parameters=params,
        output_parameters=output_params,
        declared_datatypes=True,
    )


def _kind(x: Any) -> str:
    return "nothing" if x is None else type(x).__name__


def _decode_input(i: int, item: Any, binary: memoryview, offset: int) -> tuple[Tensor, int]:
    if not isinstance(item, dict):
        raise InvalidInput(f"inputs[{i}] must be an object, got {_kind(item)}", field=f"inputs[{i}]")
    name = item.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidInput(f"inputs[{i}] needs a 'name' string", field=f"inputs[{i}].name", got=_kind(name))
    datatype = item.get("datatype")
    if not isinstance(datatype, str):
        raise InvalidInput(
            f"input '{name}' needs a 'datatype' string such as FP32 or INT64", field=name, got=_kind(datatype)
        )
    try:
        dtype = numpy_dtype(datatype)
    except InvalidInput as exc:  # name the input, not just the bad datatype
        raise InvalidInput(
            f"input '{name}': {exc.message}", field=name, expected=exc.expected, got=datatype
        ) from None
    datatype = datatype.upper()
    shape = item.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise InvalidInput(
            f"input '{name}' needs a 'shape' list of non-negative integers, got {shape!r}"[:200],
            field=name,
            got=shape,
        )
    count = math.prod(shape)
    params = item.get("parameters") or {}
    if not isinstance(params, dict):
        raise InvalidInput(f"input '{name}': 'parameters' must be an object", field=name)
    size = params.get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise InvalidInput(f"input '{name}': binary_data_size must be a non-negative integer", field=name)
        if "data" in item:
            raise InvalidInput(f"input '{name}' has both 'data' and binary_data_size", field=name)
        if offset + size > len(binary):
            raise InvalidInput(
                f"input '{name}' declares binary_data_size {size} but only "
                f"{len(binary) - offset} bytes remain in the body",
                field=name,
                expected=size,
                got=len(binary) - offset,
            )
        raw = binary[offset : offset + size]
        arr = _from_binary(name, datatype, dtype, raw, count)
        return Tensor(name, arr.reshape(shape), datatype), size
    if "data" not in item:
        raise InvalidInput(f"input '{name}' has no 'data' (and no binary_data_size)", field=name)
    arr = _from_json(name, datatype, dtype, item["data"], count)
    return Tensor(name, arr.reshape(shape), datatype), 0


def _from_binary(name: str, datatype: str, dtype: np.dtype[Any], raw: memoryview, count: int) -> np.ndarray[Any, Any]:
    if datatype == "BYTES":
        items: list[bytes] = []
        pos = 0
        while pos < len(raw):
            if pos + 4 > len(raw):
                raise InvalidInput(f"input '{name}': truncated BYTES element length at byte {pos}", field=name)
            (n,) = struct.unpack_from("<I", raw, pos)
            pos += 4
            if pos + n > len(raw):
                raise InvalidInput(f"input '{name}': BYTES element of {n} bytes is truncated", field=name)
            items.append(bytes(raw[pos : pos + n]))
            pos += n
        if len(items) != count:
            raise InvalidInput.for_field(name, f"{count} elements for its shape", f"{len(items)}")
        out = np.empty(count, dtype=object)
        out[:] = [_maybe_text(b) for b in items]
        return out
    want = count * dtype.itemsize
    if len(raw) != want:
        raise InvalidInput.for_field(
            name, f"{want} bytes of {datatype} for its shape", f"{len(raw)} bytes", "binary data"
        )
    return np.frombuffer(raw, dtype=dtype.newbyteorder("<")).astype(dtype, copy=False)


def _maybe_text(b: bytes) -> str | bytes:
    try:
        return b.decode("utf-8")
    except UnicodeDecodeError:
        return b


_NOTHING = object()


def _json_desc(x: Any) -> str:
    """A request value described in JSON terms, for error messages."""
    if x is None:
        return "null"
    if isinstance(x, bool):
        return "true" if x else "false"
    if isinstance(x, str):
        return f"string {x!r}"[:80]
    if isinstance(x, dict):
        return "an object"
    return f"{type(x).__name__} {x!r}"[:80]


def _from_json(name: str, datatype: str, dtype: np.dtype[Any], data: Any, count: int) -> np.ndarray[Any, Any]:
    flat = _flatten(name, data)
    if datatype == "BYTES":
        bad = next((x for x in flat if not isinstance(x, str)), _NOTHING)
        if bad is not _NOTHING:
            raise InvalidInput.for_field(name, "strings for datatype BYTES", _json_desc(bad))
        arr = np.empty(len(flat), dtype=object)
        arr[:] = flat
    else:
        # Scan the JSON values themselves: np.asarray would turn [true, 1.5] into floats
        # and [1, "a"] into strings, hiding which value is wrong.
        if datatype == "BOOL":
            bad = next((x for x in flat if not isinstance(x, bool)), _NOTHING)
            if bad is not _NOTHING:
                raise InvalidInput.for_field(name, "true/false for datatype BOOL", _json_desc(bad))
        else:
            bad = next((x for x in flat if isinstance(x, bool) or not isinstance(x, (int, float))), _NOTHING)
            if bad is not _NOTHING:
                raise InvalidInput.for_field(name, f"numbers for datatype {datatype}", _json_desc(bad))
        if len(flat) != count:
            raise InvalidInput.for_field(name, f"{count} values for its shape", f"{len(flat)} values")
        if isinstance(data, list) and any(isinstance(x, list) for x in data):
            try:
                np.asarray(data)
            except ValueError:
                raise InvalidInput.for_field(name, "a rectangular array", "ragged nested lists") from None
        arr = _numbers(name, datatype, dtype, flat)
    if arr.size != count:
        raise InvalidInput.for_field(name, f"{count} values for its shape", f"{arr.size} values")
    return arr


def _numbers(name: str, datatype: str, dtype: np.dtype[Any], flat: list[Any]) -> np.ndarray[Any, Any]:
    """JSON numbers (already checked to be int/float, or bool for BOOL) as an array of ``dtype``.

    Refuses what a plain cast would silently change: fractions into integers, and
    values outside the datatype's range (INT8 300 would wrap to 44, FP16 1e6 to inf).
    """
    if dtype.kind in ("i", "u"):
        frac = next((x for x in flat if isinstance(x, float) and not x.is_integer()), _NOTHING)
        if frac is not _NOTHING:
            raise InvalidInput.for_field(
                name, f"integers for datatype {datatype}", f"fractional number {frac!r}"
            )
        info = np.iinfo(dtype)
        out = next((x for x in flat if x < info.min or x > info.max), _NOTHING)
        if out is not _NOTHING:
            raise InvalidInput.for_field(
                name, f"values within {datatype} range ({info.min}..{info.max})", f"{out!r}"
            )
        # int() first: NumPy would route [2**63 - 1, 1.0] through float64 and lose precision
        return np.array([int(x) for x in flat], dtype=dtype)
    with np.errstate(over="ignore"):
        arr = np.array(flat, dtype=dtype)
    if dtype.kind == "f" and arr.size and not np.all(np.isfinite(arr)):  # JSON has no inf: overflow
        bad = flat[int(np.flatnonzero(~np.isfinite(arr))[0])]
        raise InvalidInput.for_field(name, f"values within {datatype} range", f"{bad!r}")
    return arr


def _flatten(name: str, data: Any) -> list[Any]:
    """Row-major flattening of nested JSON lists (the protocol allows both forms)."""
    if not isinstance(data, list):
        return [data]
    return list(_iter_flat(data))


def _iter_flat(data: list[Any]) -> Any:
    for x in data:
        if isinstance(x, list):
            yield from _iter_flat(x)
        else:
            yield x


def _decode_outputs(raw: Any) -> tuple[list[str] | None, dict[str, dict[str, Any]]]:
    if raw is None:
        return None, {}
    if not isinstance(raw, list):
        raise InvalidInput("'outputs' must be a list of {\"name\": ...} objects", field="outputs")
    names: list[str] = []
    params: dict[str, dict[str, Any]] = {}
    for i, o in enumerate(raw):
        if not isinstance(o, dict) or not isinstance(o.get("name"), str):
            raise InvalidInput(f"outputs[{i}] needs a 'name' string", field=f"outputs[{i}]")
        names.append(o["name"])
        p = o.get("parameters") or {}
        if not isinstance(p, dict):
            raise InvalidInput(f"outputs[{i}].parameters must be an object", field=f"outputs[{i}]")
        params[o["name"]] = p
    return names, params


def decode_tensor(index: int, item: dict[str, Any], raw: bytes | None = None) -> Tensor:
    """One tensor from a JSON-shaped ``item`` (name, datatype, shape, data) or from its raw bytes.

    The gRPC transport and the Python client decode through here, so every
    transport accepts and refuses the same tensors with the same messages.
    ``raw`` is the tensor's elements as the binary extension lays them out.
    """
    if raw is None:
        return _decode_input(index, item, memoryview(b""), 0)[0]
    params = item.get("parameters") or {}
    if not isinstance(params, dict):
        params = {}
    item = {**item, "parameters": {**params, "binary_data_size": len(raw)}}
    return _decode_input(index, item, memoryview(raw), 0)[0]


def tensor_bytes(t: Tensor) -> bytes:
    """A tensor's elements as raw little-endian bytes (BYTES: 4-byte length, then each element)."""
    return _tensor_bytes(t)


# -- encoding ---------------------------------------------------------------


def _wants_binary(request: InferenceRequest, name: str) -> bool:
    p = request.output_parameters.get(name)
    if p is not None and "binary_data" in p:
        return bool(p["binary_data"])
    return bool(request.parameters.get("binary_data_output", False))


def tensor_json(t: Tensor) -> dict[str, Any]:
    arr = t.data
    if arr.dtype.kind in ("O", "U", "S"):
        data: Any = [x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x) for x in arr.reshape(-1).tolist()]
    else:
        data = np.ascontiguousarray(arr.reshape(-1))
    return {"name": t.name, "datatype": t.datatype, "shape": list(arr.shape), "data": data}


def _tensor_bytes(t: Tensor) -> bytes:
    arr = t.data
    if t.datatype == "BYTES":
        parts = []
        for x in arr.reshape(-1).tolist():
            b = x if isinstance(x, bytes) else str(x).encode()
            parts.append(struct.pack("<I", len(b)))
            parts.append(b)
        return b"".join(parts)
    return np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()


def encode_response(response: InferenceResponse, request: InferenceRequest) -> tuple[bytes, int | None]:
    """Body bytes and, when some outputs are binary, the JSON header length."""
    outputs = []
    blobs: list[bytes] = []
    for t in response.outputs:
        if _wants_binary(request, t.name):
            blob = _tensor_bytes(t)
            blobs.append(blob)
            outputs.append(
                {"name": t.name, "datatype": t.datatype, "shape": list(t.data.shape),
                 "parameters": {"binary_data_size": len(blob)}}
            )
        else:
            outputs.append(tensor_json(t))
    doc: dict[str, Any] = {"model_name": response.model_name, "model_version": response.model_version}
    if response.id is not None:
        doc["id"] = response.id
    if response.parameters:
        doc["parameters"] = response.parameters
    doc["outputs"] = outputs
    header = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return header, None
    return header + b"".join(blobs), len(header)
