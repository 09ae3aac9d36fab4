"""The OpenAPI document of the REST API and a self-contained /docs page (no CDN needed)."""

from __future__ import annotations

import html
from functools import lru_cache
from typing import Any

from shipyard import __version__

_ERROR = {
    "description": "error",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
}


def _op(summary: str, body: str | None = None, params: tuple[str, ...] = ()) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary,
        "parameters": [
            {"name": p, "in": "path", "required": True, "schema": {"type": "string"}} for p in params
        ],
        "responses": {"200": {"description": "success", "content": {"application/json": {}}},
                      "400": _ERROR, "404": _ERROR, "413": _ERROR, "415": _ERROR, "503": _ERROR},
    }
    if body:
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{body}"}}},
        }
    return op


def _predict_op() -> dict[str, Any]:
    op = _op("Predict from records or columns", "PredictRequest", ("name",))
    op["responses"]["200"]["content"]["application/json"] = {"schema": {"$ref": "#/components/schemas/PredictResponse"}}
    return op


@lru_cache(maxsize=1)
def openapi_spec() -> dict[str, Any]:
    tensor = {
        "type": "object",
        "required": ["name", "datatype", "shape"],
        "properties": {
            "name": {"type": "string"},
            "datatype": {"type": "string", "example": "FP64"},
            "shape": {"type": "array", "items": {"type": "integer"}},
            "data": {"type": "array", "items": {}},
            "parameters": {"type": "object"},
        },
    }
    nv = ("name", "version")
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "shipyard model server",
            "version": __version__,
            "description": "Open Inference Protocol v2 (REST, with the binary tensor extension) "
            "and a simple JSON API. Model names accept 'name', 'name@alias'; versions are numbers.",
        },
        "paths": {
            "/v2/health/live": {"get": _op("Server is alive")},
            "/v2/health/ready": {"get": _op("Server has loaded its models")},
            "/v2": {"get": _op("Server metadata")},
            "/v2/models/{name}": {"get": _op("Model metadata (signature)", params=("name",))},
            "/v2/models/{name}/ready": {"get": _op("Model readiness", params=("name",))},
            "/v2/models/{name}/infer": {"post": _op("Infer", "InferenceRequest", ("name",))},
            "/v2/models/{name}/versions/{version}": {"get": _op("Version metadata", params=nv)},
            "/v2/models/{name}/versions/{version}/ready": {"get": _op("Version readiness", params=nv)},
            "/v2/models/{name}/versions/{version}/infer": {"post": _op("Infer on a version", "InferenceRequest", nv)},
            "/v1/models": {"get": _op("Models this server serves")},
            "/v1/models/{name}:predict": {"post": _predict_op()},
            "/v1/models/{name}/jobs": {
                "post": _op("Queue an asynchronous request (202 with a job id; ?callback=URL to get the result "
                            "POSTed there)", "PredictRequest", ("name",))
            },
            "/v1/jobs/{job_id}": {"get": _op("An asynchronous request: queued, done (result) or failed (error)",
                                             params=("job_id",))},
            "/metrics": {"get": _op("Prometheus metrics of the asynchronous-request consumers")},
        },
        "components": {
            "schemas": {
                "Error": {"type": "object", "properties": {"error": {"type": "string"}, "field": {"type": "string"}}},
                "Tensor": tensor,
                "InferenceRequest": {
                    "type": "object",
                    "required": ["inputs"],
                    "properties": {
                        "id": {"type": "string"},
                        "parameters": {"type": "object"},
                        "inputs": {"type": "array", "items": {"$ref": "#/components/schemas/Tensor"}},
                        "outputs": {"type": "array", "items": {"type": "object"}},
                    },
                },
                "PredictRequest": {
                    "type": "object",
                    "description": 'Either {"instances": [{...}, ...]} (rows) or {"inputs": {"col": [...]}} (columns). '
                    "Fields beside the model's inputs (ids, metadata) follow the model's extra_fields: "
                    "refuse (400), ignore (dropped) or passthrough (returned in the response's passthrough).",
                    "properties": {
                        "instances": {"type": "array", "items": {}},
                        "inputs": {"type": "object"},
                        "id": {"type": "string"},
                    },
                },
                "PredictResponse": {
                    "type": "object",
                    "required": ["model_name", "model_version", "predictions"],
                    "properties": {
                        "model_name": {"type": "string"},
                        "model_version": {"type": "string"},
                        "id": {"type": ["string", "null"]},
                        "predictions": {
                            "type": "array",
                            "items": {},
                            "description": "One entry per row: the value when the model has one output, "
                            "else an object of outputs.",
                        },
                        "passthrough": {
                            "type": "array",
                            "items": {"type": "object"},
                            "description": "Only for a model served with extra_fields=passthrough: one object per "
                            "row, in row order, holding that row's fields beside the model's inputs ({} if none).",
                        },
                    },
                },
            }
        },
    }


@lru_cache(maxsize=1)
def docs_html() -> str:
    spec = openapi_spec()
    rows = []
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            rows.append(
                f"<tr><td><code>{method.upper()}</code></td><td><code>{html.escape(path)}</code></td>"
                f"<td>{html.escape(op['summary'])}</td></tr>"
            )
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>shipyard API</title>"
        "<style>body{font-family:system-ui,sans-serif;margin:2rem}td{padding:.3rem .8rem}"
        "table{border-collapse:collapse}tr:nth-child(even){background:#f3f3f3}</style></head><body>"
        f"<h1>shipyard model server {html.escape(__version__)}</h1>"
        f"<p>{html.escape(spec['info']['description'])}</p>"
        "<p>Machine-readable: <a href='/openapi.json'>/openapi.json</a> (OpenAPI 3.1).</p>"
        "<table><tr><th>method</th><th>path</th><th>what</th></tr>" + "".join(rows) + "</table></body></html>"
    )
