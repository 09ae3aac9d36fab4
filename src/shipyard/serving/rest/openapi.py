"""The OpenAPI document, generated from the route table, and a self-contained /docs page (no CDN).

Paths, methods, bodies, media types and statuses come from the ``Endpoint``
entries the server routes with (``routes.py``); the schemas below are built
from the same definitions the server enforces: the model-name pattern and
length of ``types``, the datatypes the codecs accept, the JSON nesting limit.
"""

from __future__ import annotations

import html
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from shipyard import __version__
from shipyard.errors import KINDS
from shipyard.protocol.json_body import MAX_JSON_DEPTH
from shipyard.serving.rest.routes import CSV, JSON, OCTETS, TEXT, Body, Endpoint
from shipyard.types import DATATYPE_TO_NUMPY, NAME_MAX_LENGTH, NAME_PATTERN, VERSION_PATTERN

if TYPE_CHECKING:
    from shipyard.security.auth import Authenticator

#: A model reference in a URL: ``name``, ``name@alias`` or ``name:VERSION`` (``ModelRef.parse``).
MODEL_REF_PATTERN = rf"^{NAME_PATTERN}(@{NAME_PATTERN}|:{VERSION_PATTERN})?$"

PATH_PARAMETERS: dict[str, dict[str, Any]] = {
    "name": {
        "description": "Model name (letters, digits, '_', '.', '-', at most "
        f"{NAME_MAX_LENGTH} characters), optionally with @alias or :VERSION",
        "schema": {"type": "string", "pattern": MODEL_REF_PATTERN},
    },
    "version": {"description": "Version number", "schema": {"type": "string", "pattern": f"^{VERSION_PATTERN}$"}},
    "job_id": {"description": "Id of an asynchronous request", "schema": {"type": "string"}},
    "alias": {"description": "Alias name (letters, digits, '_', '.', '-')",
              "schema": {"type": "string", "pattern": f"^{NAME_PATTERN}$"}},
}

_ANY: dict[str, Any] = {}
_STRINGS = {"type": "array", "items": {"type": "string"}}
_SHAPE = {"type": "array", "items": {"type": "integer", "minimum": -1}}
_TENSOR_PROPERTIES: dict[str, Any] = {"name": {"type": "string"}, "datatype": {"type": "string"}, "shape": _SHAPE}
_TENSOR_METADATA: dict[str, Any] = {
    "type": "object",
    "required": ["name", "datatype", "shape"],
    "properties": _TENSOR_PROPERTIES,
}

SCHEMAS: dict[str, dict[str, Any]] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "description": "Every refusal and failure: a one-line message, what kind of failure it is, the exception "
                       "class and, when known, the field it is about. `type` is absent from answers no shipyard "
                       "error produced (no route: kind not_found; an unexpected failure: kind internal) and `kind` "
                       "from a wrong method (405, which no kind stands for).",
        "properties": {
            "error": {"type": "string"},
            "kind": {"type": "string", "enum": sorted(KINDS),
                     "description": "Stable across releases; the status follows from it"},
            "type": {"type": "string", "description": "The shipyard.errors class, e.g. ModelNotFound"},
            "field": {"type": "string"},
        },
    },
    "Live": {"type": "object", "required": ["live"], "properties": {"live": {"type": "boolean"}}},
    "Ready": {"type": "object", "required": ["ready"], "properties": {"ready": {"type": "boolean"}}},
    "ModelReady": {
        "type": "object",
        "required": ["name", "ready"],
        "properties": {"name": {"type": "string"}, "ready": {"type": "boolean"}},
    },
    "ServerMetadata": {
        "type": "object",
        "required": ["name", "version", "extensions"],
        "properties": {"name": {"type": "string"}, "version": {"type": "string"}, "extensions": _STRINGS},
    },
    "ModelMetadata": {
        "type": "object",
        "required": ["name", "versions", "platform", "inputs", "outputs"],
        "properties": {
            "name": {"type": "string"},
            "versions": _STRINGS,
            "platform": {"type": "string"},
            "inputs": {"type": "array", "items": _TENSOR_METADATA},
            "outputs": {"type": "array", "items": _TENSOR_METADATA},
            "parameters": {"type": "object"},
        },
    },
    "Tensor": {
        "type": "object",
        "required": ["name", "datatype", "shape"],
        "description": "An input tensor: 'data' (flat or nested, row-major) or parameters.binary_data_size.",
        "properties": {
            "name": {"type": "string", "minLength": 1},
            "datatype": {"type": "string", "enum": list(DATATYPE_TO_NUMPY)},
            "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
            "data": _ANY,
            "parameters": {
                "type": "object",
                "properties": {"binary_data_size": {"type": "integer", "minimum": 0}},
            },
        },
    },
    "InferenceRequest": {
        "type": "object",
        "required": ["inputs"],
        "properties": {
            "id": {"type": "string"},
            "parameters": {"type": "object"},
            "inputs": {"type": "array", "minItems": 1, "items": {"$ref": "#/components/schemas/Tensor"}},
            "outputs": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["name"],
                    "properties": {"name": {"type": "string"}, "parameters": {"type": "object"}},
                },
            },
        },
    },
    "InferenceResponse": {
        "type": "object",
        "required": ["model_name", "model_version", "outputs"],
        "properties": {
            "model_name": {"type": "string"},
            "model_version": {"type": "string"},
            "id": {"type": "string"},
            "parameters": {"type": "object"},
            "outputs": {"type": "array", "items": {**_TENSOR_METADATA, "properties": {
                **_TENSOR_PROPERTIES, "data": {"type": "array"}, "parameters": {"type": "object"}}}},
        },
    },
    "ModelList": {
        "type": "object",
        "required": ["models"],
        "properties": {
            "models": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["name", "ref", "loaded"],
                    "properties": {
                        "name": {"type": "string"},
                        "ref": {"type": "string"},
                        "loaded": {"type": "boolean"},
                    },
                },
            }
        },
    },
    "PredictRequest": {
        "type": "object",
        "description": 'Either {"instances": [{...}, ...]} (rows) or {"inputs": {"col": [...]}} (columns). '
        "Fields beside the model's inputs (ids, metadata) follow the model's extra_fields: "
        "refuse (400), ignore (dropped) or passthrough (returned in the response's passthrough).",
        "properties": {
            "instances": {"type": "array", "minItems": 1},
            "inputs": {"type": ["object", "array"]},
            "id": {"type": ["string", "integer"]},
        },
        "oneOf": [{"required": ["instances"]}, {"required": ["inputs"]}],
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
                "description": "One entry per row: the value when the model has one output, else an object of outputs.",
            },
            "passthrough": {
                "type": "array",
                "items": {"type": "object"},
                "description": "Only for a model served with extra_fields=passthrough: one object per row, in row "
                "order, holding that row's fields beside the model's inputs ({} if none).",
            },
        },
    },
    "ExplainResponse": {
        "type": "object",
        "required": ["model_name", "model_version", "method", "output", "explanations"],
        "properties": {
            "model_name": {"type": "string"},
            "model_version": {"type": "string"},
            "method": {"type": "string", "enum": ["tree", "linear", "sampling"]},
            "output": {"type": "string", "description": "What is explained: probability, margin, prediction or "
                       "an output's name"},
            "explanations": {
                "type": "array",
                "description": "One per row: value = base_value + the sum of the attributions",
                "items": {
                    "type": "object",
                    "required": ["value", "base_value", "attributions"],
                    "properties": {
                        "value": {"type": "number"},
                        "base_value": {"type": "number"},
                        "attributions": {"type": "object", "additionalProperties": {"type": "number"}},
                        "class": {"description": "a classifier's class whose probability or margin is explained"},
                    },
                },
            },
        },
    },
    "Job": {
        "type": "object",
        "required": ["job_id", "model", "status", "submitted_at"],
        "properties": {
            "job_id": {"type": "string"},
            "model": {"type": "string"},
            "status": {"type": "string", "enum": ["queued", "done", "failed"]},
            "submitted_at": {"type": "string"},
            "finished_at": {"type": ["string", "null"]},
            "result": _ANY,
            "error": _ANY,
            "callback": {"type": "string"},
            "callback_status": {"type": ["string", "null"]},
            "url": {"type": "string"},
        },
    },
    "MLflowRequest": {
        "type": "object",
        "description": "MLflow's scoring formats: exactly one of the four, optionally with params.",
        "properties": {
            "dataframe_split": {
                "type": "object",
                "required": ["data"],
                "properties": {"columns": _STRINGS, "data": {"type": "array", "items": {"type": "array"}},
                               "index": {"type": "array"}},
            },
            "dataframe_records": {"type": "array", "minItems": 1, "items": {"type": "object"}},
            "instances": {"type": "array", "minItems": 1},
            "inputs": {"type": ["object", "array"]},
            "params": {"type": ["object", "null"]},
        },
        "oneOf": [{"required": [k]} for k in ("dataframe_split", "dataframe_records", "instances", "inputs")],
    },
    "MLflowResponse": {
        "type": "object",
        "required": ["predictions"],
        "properties": {"predictions": {"type": "array"}},
    },
    "GraphQLRequest": {
        "type": "object",
        "required": ["query"],
        "properties": {
            "query": {"type": "string"},
            "variables": {"type": ["object", "null"]},
            "operationName": {"type": ["string", "null"]},
            "extensions": {"type": ["object", "null"]},
        },
    },
    "GraphQLResponse": {
        "type": "object",
        "description": "GraphQL's own shape: errors of the query come in 'errors', each with extensions.code, "
        "extensions.status (what REST would answer) and, for bad input, extensions.field.",
        "properties": {
            "data": {"type": ["object", "null"]},
            "errors": {"type": "array", "items": {"type": "object", "required": ["message"]}},
            "extensions": {"type": "object"},
        },
    },
    "OpenAPI": {"type": "object", "required": ["openapi", "paths"]},
    # Triton's extensions (rest/extensions.py): model configuration, statistics, repository index
    "ModelConfig": {
        "type": "object",
        "description": "Triton's model configuration layout, derived from the signature.",
        "required": ["name", "platform", "backend", "version_policy", "max_batch_size", "input", "output"],
        "properties": {
            "name": {"type": "string"},
            "platform": {"type": "string"},
            "backend": {"type": "string"},
            "version_policy": {"type": "object"},
            "max_batch_size": {"type": "integer", "minimum": 0},
            "input": {"type": "array", "items": {"$ref": "#/components/schemas/ModelConfigTensor"}},
            "output": {"type": "array", "items": {"$ref": "#/components/schemas/ModelConfigTensor"}},
            "dynamic_batching": {"type": "object"},
            "parameters": {
                "type": "object",
                "additionalProperties": {
                    "type": "object", "required": ["string_value"], "properties": {"string_value": {"type": "string"}},
                },
            },
        },
    },
    "ModelConfigTensor": {
        "type": "object",
        "required": ["name", "data_type", "dims"],
        "properties": {
            "name": {"type": "string"},
            "data_type": {"type": "string", "pattern": "^TYPE_[A-Z0-9]+$"},
            "dims": _SHAPE,
            "reshape": {"type": "object", "properties": {"shape": _SHAPE}},
        },
    },
    "ModelStatistics": {
        "type": "object",
        "required": ["model_stats"],
        "properties": {"model_stats": {"type": "array", "items": {
            "type": "object",
            "required": ["name", "version", "last_inference", "inference_count", "execution_count",
                         "inference_stats", "batch_stats"],
            "properties": {
                "name": {"type": "string"},
                "version": {"type": "string"},
                "last_inference": {"type": "integer", "minimum": 0, "description": "milliseconds since the epoch"},
                "inference_count": {"type": "integer", "minimum": 0, "description": "rows answered"},
                "execution_count": {"type": "integer", "minimum": 0, "description": "model calls"},
                "inference_stats": {"type": "object",
                                    "additionalProperties": {"$ref": "#/components/schemas/Duration"}},
                "batch_stats": {"type": "array", "items": {"type": "object", "required": ["batch_size"],
                                                           "properties": {"batch_size": {"type": "integer"}}}},
            },
        }}},
    },
    "Duration": {
        "type": "object",
        "required": ["count", "ns"],
        "properties": {"count": {"type": "integer", "minimum": 0}, "ns": {"type": "integer", "minimum": 0}},
    },
    "RepositoryIndexRequest": {"type": "object", "properties": {"ready": {"type": "boolean"}}},
    "RepositoryIndex": {
        "type": "array",
        "items": {
            "type": "object",
            "required": ["name", "version", "state", "reason"],
            "properties": {
                "name": {"type": "string"},
                "version": {"type": "string"},
                "state": {"type": "string", "enum": ["READY", "UNAVAILABLE"]},
                "reason": {"type": "string"},
            },
        },
    },
    # admin (rest/admin.py): alias moves and the audit log
    "AliasMove": {
        "type": "object",
        "required": ["name", "alias", "version", "previous", "action", "moved_at"],
        "properties": {"name": {"type": "string"}, "alias": {"type": "string"},
                       "version": {"type": ["integer", "null"]}, "previous": {"type": ["integer", "null"]},
                       "action": {"type": "string", "enum": ["set", "rollback", "delete"]},
                       "moved_at": {"type": "string"}, "actor": {"type": ["string", "null"]},
                       "note": {"type": ["string", "null"]}},
    },
    "AliasList": {
        "type": "object",
        "required": ["model", "aliases", "history"],
        "properties": {"model": {"type": "string"},
                       "aliases": {"type": "object", "additionalProperties": {"type": "integer"}},
                       "history": {"type": "array", "items": {"$ref": "#/components/schemas/AliasMove"}}},
    },
    "AliasRequest": {
        "type": "object",
        "required": ["version"],
        "additionalProperties": False,
        "properties": {"version": {"type": "integer", "minimum": 1},
                       "force": {"type": "boolean", "description": "move even when a promotion gate fails"}},
    },
    "AuditEntry": {
        "type": "object",
        "required": ["seq", "at", "actor", "source", "action", "target", "outcome", "prev_hash", "hash"],
        "properties": {"seq": {"type": "integer"}, "at": {"type": "number"}, "actor": {"type": "string"},
                       "source": {"type": "string"}, "action": {"type": "string"}, "target": {"type": "string"},
                       "outcome": {"type": "string", "enum": ["ok", "refused", "failed"]},
                       "details": {"type": ["object", "null"]}, "prev_hash": {"type": "string"},
                       "hash": {"type": "string"}},
    },
    "AuditList": {
        "type": "object",
        "required": ["entries"],
        "properties": {"entries": {"type": "array", "items": {"$ref": "#/components/schemas/AuditEntry"}}},
    },
    "AuditVerify": {
        "type": "object",
        "required": ["ok", "checked", "head_seq", "head_hash", "first_bad", "reason"],
        "properties": {"ok": {"type": "boolean"}, "checked": {"type": "integer"}, "head_seq": {"type": "integer"},
                       "head_hash": {"type": "string"}, "first_bad": {"type": ["integer", "null"]},
                       "reason": {"type": "string"}},
    },
    # rollouts (rest/experiments.py, rollout/report.py): numbers a report cannot estimate yet are null
    "ExperimentList": {
        "type": "object",
        "required": ["experiments"],
        "properties": {"experiments": {"type": "array", "items": {"$ref": "#/components/schemas/Experiment"}}},
    },
    "Experiment": {
        "type": "object",
        "required": ["model", "kind", "state", "revision", "step", "arms"],
        "properties": {
            "model": {"type": "string"},
            "kind": {"type": "string", "enum": ["split", "canary", "bandit"]},
            "state": {"type": "string"},
            "revision": {"type": "integer"},
            "step": {"type": "integer"},
            "reason": {"type": "string"},
            "arms": {"type": "array", "items": {
                "type": "object",
                "required": ["name", "target", "weight", "role"],
                "properties": {"name": {"type": "string"}, "target": {"type": "string"},
                               "weight": {"type": "number"}, "role": {"type": "string", "enum": ["primary", "shadow"]}},
            }},
        },
    },
    # feedback (rest/feedback.py, monitoring/feedback.py, monitoring/quality.py)
    "FeedbackRequest": {
        "type": "object",
        "required": ["feedback"],
        "additionalProperties": False,
        # at most 10,000 items (400 beyond), not a maxItems: a body that long is over most body limits (413)
        "properties": {"feedback": {"type": "array", "minItems": 1, "description": "1 to 10,000 items",
                                    "items": {"$ref": "#/components/schemas/FeedbackItem"}}},
    },
    "FeedbackItem": {
        "type": "object",
        "description": "A label or reward of one prediction (prediction_id: the X-Prediction-ID header of its "
                       "response; its shadow copies too) or of every prediction of a request (request_id). "
                       "Idempotent per prediction, row and source: the first send wins.",
        "additionalProperties": False,
        "oneOf": [{"required": ["prediction_id"]}, {"required": ["request_id"]}],
        "anyOf": [{"required": ["label"]}, {"required": ["reward"]}],
        "properties": {
            # lengths are checked by the server (400), not declared: a fuzzer's over-long strings would
            # otherwise make bodies over the size limit (413), which is not a schema's rejection
            "prediction_id": {"type": "string", "minLength": 1, "description": "At most 64 characters"},
            "request_id": {"type": "string", "minLength": 1, "description": "At most 128 characters"},
            "row": {"type": "integer", "minimum": 0, "maximum": 2**31 - 1,
                    "description": "One row of a multi-row prediction; absent: every row"},
            "label": {"type": ["string", "number", "boolean"], "description": "Text of at most 1,000 characters, "
                      "a number or a boolean"},
            "reward": {"type": "number"},
            "time": {"type": ["number", "string"], "minimum": 0,
                     "description": "When the outcome was observed: epoch seconds or ISO-8601; absent: on receipt"},
            "source": {"type": "string", "minLength": 1, "description": "Who labelled it (at most 128 characters); "
                       "absent: default"},
        },
    },
    "FeedbackResponse": {
        "type": "object",
        "required": ["results", "counts"],
        "properties": {
            "results": {"type": "array", "items": {
                "type": "object", "required": ["outcome", "rows"],
                "properties": {"outcome": {"type": "string", "enum": ["accepted", "duplicate", "late"]},
                               "rows": {"type": "integer"}, "reason": {"type": "string"}}}},
            "counts": {"type": "object", "additionalProperties": {"type": "integer"}},
        },
    },
    "RetrainRuns": {
        "type": "object",
        "description": "Retraining runs, newest first (shipyard.retraining).",
        "required": ["runs"],
        "properties": {
            "runs": {"type": "array", "items": {
                "type": "object",
                "required": ["id", "model", "state", "trigger", "created_at"],
                "properties": {
                    "id": {"type": "string"},
                    "model": {"type": "string"},
                    "state": {"type": "string", "enum": ["queued", "assembling", "training", "registered", "gated",
                                                         "canary", "promoted", "rejected", "failed"]},
                    "trigger": {"type": "string", "enum": ["hand", "schedule", "alert"]},
                    "trigger_key": {"type": ["string", "null"]},
                    "evidence": {"type": "object", "description": "What started the run"},
                    "options": {"type": "object", "description": "The retraining settings it ran with"},
                    "parent_version": {"type": ["integer", "null"]},
                    "candidate_version": {"type": ["integer", "null"]},
                    "dataset": {"type": ["object", "null"], "description": "The dataset's manifest"},
                    "gates": {"description": "The promotion gates' verdicts"},
                    "reason": {"type": ["string", "null"]},
                    "created_at": {"type": "number"},
                    "updated_at": {"type": "number"},
                    "finished_at": {"type": ["number", "null"]},
                },
            }},
        },
    },
    "DriftReports": {
        "type": "object",
        "description": "Drift reports recorded by the server's drift monitor, newest first per version and arm.",
        "required": ["model", "reports"],
        "properties": {
            "model": {"type": "string"},
            "reports": {"type": "array", "items": {
                "type": "object",
                "required": ["version", "arm", "start", "end", "rows", "drifted", "share", "report"],
                "properties": {
                    "version": {"type": "integer"},
                    "arm": {"type": "string"},
                    "start": {"type": "integer", "description": "The window's start, epoch seconds"},
                    "end": {"type": "integer"},
                    "rows": {"type": "integer"},
                    "drifted": {"type": "boolean", "description": "Dataset drift: the share reached drift_share"},
                    "share": {"type": "number", "description": "Share of input features that drifted"},
                    "at": {"type": "number"},
                    "report": {"type": "object", "description": "features, outputs, multivariate: per check the "
                               "test, statistic, p_value, effect, threshold, n, drifted, skipped, quality"},
                },
            }},
        },
    },
    "Quality": {
        "type": "object",
        "description": "Realized metrics per version and arm over predictions made in [since, until) that have a "
                       "label within the join window. Binary classifiers: precision/recall/F1 of the label 1; "
                       "multiclass: their macro average (average says which).",
        "required": ["model", "groups"],
        "properties": {
            "model": {"type": "string"},
            "since": {"type": ["number", "null"]},
            "until": {"type": ["number", "null"]},
            "groups": {"type": "array", "items": {
                "type": "object",
                "required": ["served", "labelled", "coverage", "label_delay_seconds", "kind", "n", "metrics"],
                "properties": {
                    "version": {"type": "integer"},
                    "arm": {"type": "string"},
                    "served": {"type": "integer"},
                    "labelled": {"type": "integer"},
                    "coverage": {"type": ["number", "null"]},
                    "label_delay_seconds": {"type": "object", "properties": {
                        "median": {"type": ["number", "null"]}, "p90": {"type": ["number", "null"]}}},
                    "kind": {"type": ["string", "null"], "enum": ["classifier", "regressor", None]},
                    "n": {"type": "integer"},
                    "metrics": {"type": "object", "additionalProperties": {"type": "number"}},
                    "average": {"type": "string", "enum": ["binary", "macro"]},
                    "positive_label": {},
                },
            }},
        },
    },
    "ExperimentReport": {
        "type": "object",
        "description": "One traffic policy revision: each arm's numbers, each arm against the control "
                       "(fixed-horizon and always-valid p-values, Benjamini-Hochberg adjusted), the sample "
                       "ratio check and how far a decision is. Numbers not estimable yet are null.",
        "required": ["model", "kind", "state", "revision", "step", "control", "alpha", "arms", "comparisons",
                     "srm", "planning"],
        "properties": {
            "model": {"type": "string"},
            "kind": {"type": "string"},
            "state": {"type": "string"},
            "revision": {"type": "integer"},
            "step": {"type": "integer"},
            "control": {"type": "string"},
            "alpha": {"type": "number"},
            "elapsed_seconds": {"type": ["number", "null"]},
            "arms": {"type": "array", "items": {"type": "object", "required": ["arm", "role", "n", "share"]}},
            "comparisons": {"type": "array", "items": {
                "type": "object", "required": ["arm", "metric", "p_value", "sequential_p_value"]}},
            "srm": {"type": ["object", "null"]},
            "planning": {"type": "array", "items": {"type": "object"}},
        },
    },
}


def _content(body: Body) -> dict[str, Any]:
    """The body's schema for its JSON media types; other media types (text, HTML, binary) are strings."""
    schema = {"$ref": f"#/components/schemas/{body.schema}"} if body.schema else {}
    return {
        media: {"schema": schema if media == JSON or media.endswith("+json") else _TEXT_SCHEMA.get(media, _STRING)}
        for media in body.media_types
    }


_STRING: dict[str, Any] = {"type": "string"}
_TEXT_SCHEMA: dict[str, dict[str, Any]] = {
    OCTETS: {"type": "string", "format": "binary"},
    TEXT: {"type": "string"},
    CSV: {"type": "string", "description": "CSV with a header row"},
}
_ERROR_BODY = Body("Error")
_STATUS_TEXT = {
    400: "the request is malformed or does not fit the model's signature",
    404: "no such model, version, alias or job (or prediction, for feedback)",
    409: "a promotion gate failed (the alias did not move), or a concurrent change won",
    413: "the body is larger than the server accepts",
    415: "the content type or content encoding is not supported here",
    500: "the model or the server failed",
    503: "not loaded yet, or overloaded: retry after Retry-After seconds",
    504: "the request outlived its deadline",
    401: "no credentials, or credentials that do not check out (send Authorization: Bearer KEY)",
    403: "the credential lacks the scope this route needs, or may not use this model",
    429: "the credential is over its request rate: retry after Retry-After seconds",
}

#: Statuses every route that needs credentials may answer, when authentication is on.
AUTH_ERRORS = (401, 403, 429)


_BODY_METHODS = ("POST", "PUT", "PATCH")


def _operation(e: Endpoint, method: str, auth: Authenticator | None) -> dict[str, Any]:
    responses: dict[str, Any] = {
        str(e.status): {"description": e.response.description or "success", "content": _content(e.response)}
    }
    for status, body in e.replies:
        responses[str(status)] = {"description": body.description or "see the body", "content": _content(body)}
    guarded = auth is not None and not auth.open(e.scope)
    for status in (*e.errors, *(AUTH_ERRORS if guarded else ())):
        responses.setdefault(str(status), {"description": _STATUS_TEXT.get(status, "error"),
                                           "content": _content(_ERROR_BODY)})
    params: list[dict[str, Any]] = [
        {"name": p, "in": "path", "required": True, **PATH_PARAMETERS[p]} for p in e.path_params
    ]
    params += [
        {"name": q.name, "in": "query", "required": False, "description": q.description,
         "schema": {"type": q.schema}}
        for q in e.query
    ]
    op: dict[str, Any] = {"summary": e.summary, "responses": responses}
    if guarded:
        op["security"] = [{"bearer": []}]
        op["description"] = f"Needs the '{e.scope}' scope." if e.scope != "authenticated" else (
            "Needs a valid credential; each field needs its own scope (models, model: read; predict: predict).")
    if params:
        op["parameters"] = params
    if e.request is not None and method in _BODY_METHODS:
        op["requestBody"] = {"required": not e.request.optional, "content": _content(e.request)}
        if e.request.description:
            op["requestBody"]["description"] = e.request.description
    return op


def openapi_spec(endpoints: Iterable[Endpoint], auth: Authenticator | None = None) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``endpoints`` (with ``auth``: each route's credentials and scope)."""
    paths: dict[str, dict[str, Any]] = {}
    for e in endpoints:
        for method in e.methods:
            paths.setdefault(e.path, {})[method.lower()] = _operation(e, method, auth)
    components: dict[str, Any] = {"schemas": SCHEMAS}
    if auth is not None:
        components["securitySchemes"] = {"bearer": {
            "type": "http", "scheme": "bearer",
            "description": "An API key (shipyard keys create) or a JWT from the configured issuer"}}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "shipyard model server",
            "version": __version__,
            "description": "Open Inference Protocol v2 (REST, with the binary tensor extension) "
            "and a simple JSON API. Model names accept 'name', 'name@alias' and 'name:VERSION'. "
            f"JSON bodies may nest at most {MAX_JSON_DEPTH} levels deep on every route.",
        },
        "paths": paths,
        "components": components,
    }


def docs_html(spec: dict[str, Any]) -> str:
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
