"""KServe's Python SDK calls against a running server, in a process of their own.

Usage: python _kserve_calls.py REST_URL GRPC_TARGET ROWS_JSON

Why a separate process: the SDK and tritonclient.grpc each register their copy of
the protocol's ``inference.*`` messages in protobuf's default descriptor pool, so
the two cannot be imported into one interpreter (the second import fails with
"duplicate symbol"). The test suite imports tritonclient; the SDK runs here.

ROWS_JSON is a file holding ``{"features": [...], "rows": {feature: [values]}}``.
Prints one JSON object: each call's name and its result, or for a failed call
``{"error": message, "status": HTTP status or gRPC code name}``.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import httpx
import kserve
import numpy as np
from kserve import InferInput, InferRequest, RESTConfig
from kserve.protocol.grpc import grpc_predict_v2_pb2 as kpb
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc as kpb_grpc
from kserve.protocol.rest import v2_datamodels


def request(model: str, features: list[str], rows: dict[str, list[float]], datatype: str, binary: bool,
            **params: Any) -> InferRequest:
    dtype = np.float32 if datatype == "FP32" else np.float64
    inputs = []
    for name in features:
        column = np.asarray(rows[name], dtype=dtype)
        tensor = InferInput(name, list(column.shape), datatype)
        tensor.set_data_from_numpy(column, binary_data=binary)
        inputs.append(tensor)
    return InferRequest(model, inputs, request_id="kserve-1", parameters=params or None)


def answer(response: Any) -> dict[str, Any]:
    return {
        "id": response.id,
        "model_version": response.model_version,
        "outputs": [{"name": o.name, "datatype": o.datatype, "shape": list(o.shape), "data": o.as_numpy().tolist()}
                    for o in response.outputs],
    }


async def attempt(call: Callable[[], Awaitable[Any]]) -> Any:
    try:
        return await call()
    except httpx.HTTPStatusError as exc:
        return {"error": str(exc), "status": exc.response.status_code}
    except grpc.RpcError as exc:
        return {"error": exc.details(), "status": exc.code().name}  # type: ignore[attr-defined]


async def main(url: str, target: str, features: list[str], rows: dict[str, list[float]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    rest = kserve.InferenceRESTClient(RESTConfig(protocol="v2", retries=0, timeout=30))
    try:
        out["rest health"] = [await rest.is_server_live(url), await rest.is_server_ready(url),
                              await rest.is_model_ready(url, "demo"), await rest.is_model_ready(url, "nope")]
        for model, datatype in (("demo", "FP64"), ("f32", "FP32"), ("demo", "FP32"), ("f32", "FP64")):
            for binary in (False, True):
                params = {"binary_data_output": True} if binary else {}
                req = request(model, features, rows, datatype, binary, **params)

                async def infer(req: InferRequest = req, model: str = model) -> Any:
                    return answer(await rest.infer(url, req, model_name=model))

                out[f"rest infer {model} {datatype} {'binary' if binary else 'json'}"] = await attempt(infer)
    finally:
        await rest.close()
    # the SDK has no metadata calls: its REST data models and its gRPC stub read ours
    out["rest server metadata"] = v2_datamodels.ServerMetadataResponse.model_validate(
        httpx.get(f"{url}/v2").json()).model_dump()
    for model in ("demo", "f32"):
        out[f"rest model metadata {model}"] = v2_datamodels.ModelMetadataResponse.model_validate(
            httpx.get(f"{url}/v2/models/{model}").json()).model_dump()

    async with kserve.InferenceGRPCClient(target, retries=0) as client:
        out["grpc health"] = [await client.is_server_live(), await client.is_server_ready(),
                              await client.is_model_ready("demo@champion")]
        out["grpc model ready nope"] = await attempt(lambda: client.is_model_ready("nope"))
        for model, datatype in (("demo", "FP64"), ("f32", "FP32"), ("demo", "FP32"), ("f32", "FP64")):
            for raw in (True, False):
                req = request(model, features, rows, datatype, raw)

                async def infer_grpc(req: InferRequest = req) -> Any:
                    return answer(await client.infer(req))

                out[f"grpc infer {model} {datatype} {'raw' if raw else 'typed'}"] = await attempt(infer_grpc)
    with grpc.insecure_channel(target) as channel:
        stub = kpb_grpc.GRPCInferenceServiceStub(channel)
        meta = stub.ServerMetadata(kpb.ServerMetadataRequest(), timeout=10)
        out["grpc server metadata"] = {"name": meta.name, "version": meta.version, "extensions": list(meta.extensions)}
        for model in ("demo", "f32"):
            m = stub.ModelMetadata(kpb.ModelMetadataRequest(name=model), timeout=10)
            out[f"grpc model metadata {model}"] = {
                "name": m.name, "versions": list(m.versions), "platform": m.platform,
                "inputs": [{"name": i.name, "datatype": i.datatype, "shape": list(i.shape)} for i in m.inputs],
            }
    return out


if __name__ == "__main__":
    spec = json.loads(Path(sys.argv[3]).read_text())
    print(json.dumps(asyncio.run(main(sys.argv[1], sys.argv[2], spec["features"], spec["rows"]))))
