"""Open Inference Protocol gRPC messages to and from shipyard's protocol-neutral values.

Server side: ``decode_request``, ``encode_response``, ``metadata_message`` and, for
Triton's extensions, ``config_message``, ``statistics_message``, ``index_message``
(the data plane's documents, whose keys are the messages' field names).
Client side (``shipyard.Client`` over ``grpc://``): ``encode_request``,
``decode_response``, ``metadata_dict``.

Every tensor is decoded by ``protocol.oip.decode_tensor``, the code the REST
transport uses, so a tensor that REST refuses is refused here with the same
message. Raw contents (``raw_input_contents``, what tritonclient sends) are laid
out as the REST binary extension lays them out; typed contents use the field
the datatype names (``CONTENTS_FIELD``).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping, MutableMapping
from typing import Any

import numpy as np
import orjson
from google.protobuf import json_format

from shipyard.errors import InvalidInput
from shipyard.protocol import oip
from shipyard.protocol.grpc import inference_pb2 as pb
from shipyard.types import InferenceRequest, InferenceResponse, Tensor

#: The InferTensorContents field that carries each datatype. FP16 has none: it travels raw.
CONTENTS_FIELD: dict[str, str] = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
_FIELDS = tuple(sorted(set(CONTENTS_FIELD.values())))
_INT64_MAX = 2**63 - 1
_FLOAT_DTYPES: dict[str, np.dtype[Any]] = {"FP32": np.dtype("<f4"), "FP64": np.dtype("<f8")}


# -- parameters ----------------------------------------------------------------------


def params_to_dict(params: Mapping[str, Any]) -> dict[str, Any]:
    """A protobuf ``map<string, InferParameter>`` as plain Python values."""
    out: dict[str, Any] = {}
    for key, param in params.items():
        which = param.WhichOneof("parameter_choice")
        out[key] = None if which is None else getattr(param, which)
    return out


def fill_params(target: MutableMapping[str, Any], values: Mapping[str, Any]) -> None:
    """Write plain values into a protobuf ``map<string, InferParameter>`` (other values as JSON text)."""
    for key, value in values.items():
        param = target[key]
        if isinstance(value, (bool, np.bool_)):
            param.bool_param = bool(value)
        elif isinstance(value, (int, np.integer)):
            if int(value) > _INT64_MAX:
                param.uint64_param = int(value)
            else:
                param.int64_param = int(value)
        elif isinstance(value, (float, np.floating)):
            param.double_param = float(value)
        elif isinstance(value, str):
            param.string_param = value
        else:
            param.string_param = orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY).decode()


# -- server side: requests in, responses out ---------------------------------------------


def decode_request(msg: pb.ModelInferRequest) -> InferenceRequest:
    """A ModelInferRequest as an ``InferenceRequest``; InvalidInput names the input at fault."""
    if not msg.inputs:
        raise InvalidInput("inference request needs a non-empty 'inputs' list", field="inputs", got="nothing")
    raw = msg.raw_input_contents
    if raw and len(raw) != len(msg.inputs):
        raise InvalidInput(
            f"raw_input_contents has {len(raw)} entries but the request has {len(msg.inputs)} inputs; "
            "send one entry per input, in input order",
            field="raw_input_contents",
            expected=len(msg.inputs),
            got=len(raw),
        )
    inputs: list[Tensor] = []
    seen: set[str] = set()
    for i, t in enumerate(msg.inputs):
        item: dict[str, Any] = {
            "name": t.name,
            "datatype": t.datatype,
            "shape": list(t.shape),
            "parameters": params_to_dict(t.parameters),
        }
        if raw:
            if t.HasField("contents"):
                raise InvalidInput(
                    f"input '{t.name}' has typed contents but the request also sends raw_input_contents; "
                    "use one or the other",
                    field=t.name or f"inputs[{i}]",
                )
            tensor = oip.decode_tensor(i, item, raw[i])
        else:
            tensor = _decode_typed(i, t, item)
        if tensor.name in seen:
            raise InvalidInput(f"input '{tensor.name}' appears twice", field=tensor.name)
        seen.add(tensor.name)
        inputs.append(tensor)
    outputs: list[str] = []
    output_params: dict[str, dict[str, Any]] = {}
    for i, o in enumerate(msg.outputs):
        if not o.name:
            raise InvalidInput(f"outputs[{i}] needs a 'name' string", field=f"outputs[{i}]")
        outputs.append(o.name)
        output_params[o.name] = params_to_dict(o.parameters)
    return InferenceRequest(
        inputs=inputs,
        id=msg.id or None,
        outputs=outputs or None,
        parameters=params_to_dict(msg.parameters),
        output_parameters=output_params,
        declared_datatypes=True,
    )


def _decode_typed(i: int, t: Any, item: dict[str, Any]) -> Tensor:
    """One input from its typed contents, refusing values put in another datatype's field."""
    datatype = t.datatype.upper()
    field = CONTENTS_FIELD.get(datatype)
    used = [f for f in _FIELDS if len(getattr(t.contents, f))]
    if t.name and datatype == "FP16":
        raise InvalidInput(
            f"input '{t.name}': FP16 has no typed contents field; send it in raw_input_contents",
            field=t.name,
            expected="raw_input_contents",
            got="contents" if used else "nothing",
        )
    if field is None:  # unknown datatype or a missing name: decode_tensor says which, as REST does
        return oip.decode_tensor(i, {**item, "data": []})
    wrong = [f for f in used if f != field]
    if wrong:
        raise InvalidInput(
            f"input '{t.name}': datatype {datatype} carries its values in contents.{field}, "
            f"got contents.{wrong[0]}",
            field=t.name or f"inputs[{i}]",
            expected=f"contents.{field}",
            got=f"contents.{wrong[0]}",
        )
    values = getattr(t.contents, field)
    if datatype == "BYTES":  # through the raw layout, so text and binary elements decode as REST does
        raw = b"".join(struct.pack("<I", len(b)) + b for b in values)
        return oip.decode_tensor(i, item, raw)
    if datatype in ("FP32", "FP64"):  # NaN and inf are real values here (JSON has none): the signature decides
        count = math.prod(item["shape"])
        if t.name and min(item["shape"], default=0) >= 0 and len(values) != count:
            raise InvalidInput.for_field(t.name, f"{count} values for its shape", f"{len(values)} values")
        return oip.decode_tensor(i, item, np.asarray(values, dtype=_FLOAT_DTYPES[datatype]).tobytes())
    return oip.decode_tensor(i, {**item, "data": list(values)})


def encode_response(response: InferenceResponse, *, raw: bool) -> pb.ModelInferResponse:
    """An ``InferenceResponse`` as ModelInferResponse: raw contents when ``raw`` (or for FP16), else typed."""
    msg = pb.ModelInferResponse(
        model_name=response.model_name, model_version=response.model_version, id=response.id or ""
    )
    fill_params(msg.parameters, response.parameters)
    raw = raw or any(t.datatype not in CONTENTS_FIELD for t in response.outputs)
    for t in response.outputs:
        out = msg.outputs.add(name=t.name, datatype=t.datatype, shape=list(t.data.shape))
        fill_params(out.parameters, t.parameters)
        if raw:
            msg.raw_output_contents.append(oip.tensor_bytes(t))
        else:
            _fill_contents(out.contents, t)
    return msg


def _fill_contents(contents: Any, t: Tensor) -> None:
    flat = t.data.reshape(-1)
    target = getattr(contents, CONTENTS_FIELD[t.datatype])
    if t.datatype == "BYTES":
        target.extend(x if isinstance(x, bytes) else str(x).encode() for x in flat.tolist())
    else:
        target.extend(flat.tolist())


def metadata_message(meta: Mapping[str, Any]) -> pb.ModelMetadataResponse:
    """The data plane's model metadata (the REST document) as ModelMetadataResponse."""

    def specs(items: list[dict[str, Any]]) -> list[pb.ModelMetadataResponse.TensorMetadata]:
        return [
            pb.ModelMetadataResponse.TensorMetadata(name=s["name"], datatype=s["datatype"], shape=s["shape"])
            for s in items
        ]

    return pb.ModelMetadataResponse(
        name=meta["name"],
        versions=meta["versions"],
        platform=meta["platform"],
        inputs=specs(meta["inputs"]),
        outputs=specs(meta["outputs"]),
        properties={k: str(v) for k, v in (meta.get("parameters") or {}).items()},
    )


def config_message(config: Mapping[str, Any]) -> pb.ModelConfigResponse:
    """The data plane's model configuration (Triton's JSON layout) as ModelConfigResponse."""
    msg = pb.ModelConfigResponse()
    json_format.ParseDict(config, msg.config)
    return msg


def statistics_message(doc: Mapping[str, Any]) -> pb.ModelStatisticsResponse:
    """The data plane's ``{"model_stats": [...]}`` as ModelStatisticsResponse."""
    msg = pb.ModelStatisticsResponse()
    json_format.ParseDict(doc, msg)
    return msg


def index_message(models: list[dict[str, Any]]) -> pb.RepositoryIndexResponse:
    """The data plane's repository index as RepositoryIndexResponse."""
    msg = pb.RepositoryIndexResponse()
    json_format.ParseDict({"models": models}, msg)
    return msg


# -- client side: requests out, responses in ------------------------------------------------


def encode_request(request: InferenceRequest, model: str, version: str | None = None) -> pb.ModelInferRequest:
    """An ``InferenceRequest`` as ModelInferRequest with raw contents (the compact form)."""
    msg = pb.ModelInferRequest(model_name=model, model_version=version or "", id=request.id or "")
    fill_params(msg.parameters, request.parameters)
    for t in request.inputs:
        tensor = msg.inputs.add(name=t.name, datatype=t.datatype, shape=list(t.data.shape))
        fill_params(tensor.parameters, t.parameters)
        msg.raw_input_contents.append(oip.tensor_bytes(t))
    for name in request.outputs or ():
        msg.outputs.add(name=name)
    return msg


def decode_response(msg: pb.ModelInferResponse) -> InferenceResponse:
    """A ModelInferResponse (raw or typed contents) as an ``InferenceResponse``."""
    outputs: list[Tensor] = []
    raw = msg.raw_output_contents
    for i, o in enumerate(msg.outputs):
        item: dict[str, Any] = {"name": o.name, "datatype": o.datatype, "shape": list(o.shape)}
        if i < len(raw):
            tensor = oip.decode_tensor(i, item, raw[i])
        elif o.datatype.upper() == "BYTES":
            blob = b"".join(struct.pack("<I", len(b)) + b for b in o.contents.bytes_contents)
            tensor = oip.decode_tensor(i, item, blob)
        else:
            field = CONTENTS_FIELD.get(o.datatype.upper())
            data = list(getattr(o.contents, field)) if field else []
            tensor = oip.decode_tensor(i, {**item, "data": data})
        tensor.parameters = params_to_dict(o.parameters)
        outputs.append(tensor)
    return InferenceResponse(
        model_name=msg.model_name,
        model_version=msg.model_version,
        outputs=outputs,
        id=msg.id or None,
        parameters=params_to_dict(msg.parameters),
    )


def metadata_dict(msg: pb.ModelMetadataResponse) -> dict[str, Any]:
    """ModelMetadataResponse as the document REST returns from ``GET /v2/models/{name}``."""

    def specs(items: Any) -> list[dict[str, Any]]:
        return [{"name": s.name, "datatype": s.datatype, "shape": list(s.shape)} for s in items]

    return {
        "name": msg.name,
        "versions": list(msg.versions),
        "platform": msg.platform,
        "inputs": specs(msg.inputs),
        "outputs": specs(msg.outputs),
        "parameters": dict(msg.properties),
    }
