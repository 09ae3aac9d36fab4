"""The GraphQL schema: served models, their versions, aliases and signatures, ``predict`` and ``explain``.

Resolvers only translate: every question goes to the data plane (resolve,
infer) or, for versions and aliases, to the ``ModelCatalog``; predictions run
through ``DataPlane.infer`` like a REST or gRPC request, under the request id
the REST middleware set for this HTTP request.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
import strawberry
from strawberry.permission import BasePermission
from strawberry.scalars import JSON

from shipyard.context import RequestContext, request_id_var
from shipyard.errors import InvalidInput, PermissionDenied, ShipyardError
from shipyard.protocol import simple
from shipyard.registry import ModelVersion
from shipyard.security.principal import principal_var
from shipyard.serving.catalog import ModelCatalog
from shipyard.serving.dataplane import DataPlane
from shipyard.serving.explanations import Explanations
from shipyard.signature import Signature, TensorSpec
from shipyard.types import InferenceRequest


@dataclass
class Context:
    """What every resolver gets as ``info.context``."""

    dataplane: DataPlane
    catalog: ModelCatalog
    request: Any = None
    response: Any = None
    explanations: Explanations | None = None
    """What ``explain`` asks (the service behind ``POST /v1/models/NAME:explain``)."""


Info = strawberry.Info[Context, None]


@strawberry.type(name="TensorSpec", description="One named input or output of a signature.")
class TensorSpecType:
    name: str
    datatype: str = strawberry.field(description="Open Inference Protocol datatype, e.g. FP64, INT64, BYTES.")
    shape: list[int] = strawberry.field(description="-1 marks a dimension of any size (the rows).")
    allow_nan: bool


@strawberry.type(name="Signature", description="What a version accepts and returns.")
class SignatureType:
    format: str = strawberry.field(description="'columns' (a table) or 'tensors' (named n-d arrays).")
    inputs: list[TensorSpecType]
    outputs: list[TensorSpecType]


@strawberry.type(name="Version", description="One immutable registered version.")
class VersionType:
    version: int
    flavor: str
    digest: str = strawberry.field(description="sha256 over every file of the version.")
    created_at: str
    description: str
    tags: JSON
    metrics: JSON
    signature: SignatureType


@strawberry.type(name="Alias", description="A movable name for one version, e.g. champion.")
class AliasType:
    name: str
    version: int


async def _versions(root: ModelType, info: Info) -> list[VersionType]:
    return [_version(v) for v in await info.context.catalog.versions(root.name)]


async def _aliases(root: ModelType, info: Info) -> list[AliasType]:
    found = await info.context.catalog.aliases(root.name)
    return [AliasType(name=k, version=v) for k, v in sorted(found.items())]


async def _current(root: ModelType, info: Info) -> VersionType:
    return _version(await info.context.catalog.version(root.name))


async def _current_signature(root: ModelType, info: Info) -> SignatureType:
    return _signature((await info.context.catalog.version(root.name)).signature)


@strawberry.type(name="Model", description="A model this server serves.")
class ModelType:
    name: str
    ref: str = strawberry.field(description="What the bare name means on this server, e.g. demo@champion.")
    loaded: bool
    versions: list[VersionType] = strawberry.field(
        resolver=_versions, description="Every registered version, oldest first."
    )
    aliases: list[AliasType] = strawberry.field(
        resolver=_aliases, description="Every alias and the version it points to."
    )
    current: VersionType = strawberry.field(
        resolver=_current, description="The version the bare name means now (an alias is followed)."
    )
    signature: SignatureType = strawberry.field(
        resolver=_current_signature, description="The signature of the current version."
    )


@strawberry.type(name="Output", description="One output tensor of a prediction.")
class OutputType:
    name: str
    datatype: str
    shape: list[int]
    data: JSON = strawberry.field(description="The values, flattened in row-major order.")


@strawberry.type(name="Prediction")
class PredictionType:
    model_name: str
    model_version: str = strawberry.field(description="The version that answered (aliases resolved).")
    request_id: str
    predictions: JSON = strawberry.field(
        description="One entry per record: the value when the model has one output, else an object of outputs."
    )
    outputs: list[OutputType]
    passthrough: JSON | None = strawberry.field(
        default=None,
        description="For a model served with extra_fields=passthrough: one object per record, in order, "
        "holding the record's fields beside the model's inputs. Null otherwise.",
    )


def _models(info: Info) -> list[ModelType]:
    return [ModelType(name=m["name"], ref=m["ref"], loaded=m["loaded"]) for m in info.context.dataplane.models()]


async def _model(info: Info, name: str) -> ModelType:
    served = {m["name"]: m for m in info.context.dataplane.models()}
    bare = info.context.catalog.served_name(name)  # ModelNotServed for the others
    if bare != name:
        await info.context.catalog.version(name)  # ModelNotFound for an unknown alias or version
    m = served.get(bare, {"name": bare, "ref": bare, "loaded": False})
    return ModelType(name=m["name"], ref=m["ref"], loaded=m["loaded"])


async def _predict(info: Info, model: str, records: JSON, version: str | None = None) -> PredictionType:
    dp = info.context.dataplane
    if not isinstance(records, list) or not records:
        raise InvalidInput(
            "records must be a non-empty list of rows (objects, or lists of values for a one-input model)",
            field="records",
            got=type(records).__name__,
        )
    body = orjson.dumps({"instances": records})
    found: list[Any] = []
    ctx = RequestContext.new("graphql", request_id_var.get(),
                             headers=getattr(info.context.request, "headers", None))

    def decode(signature: Signature) -> InferenceRequest:
        try:
            request, passthrough = simple.decode_predict(body, signature)
        except InvalidInput as exc:
            if exc.field == "instances":  # the argument is called records here
                exc.field = "records"
            raise
        found.append(passthrough)
        request.id = ctx.request_id
        return request

    response = await dp.infer(model, version, decode, ctx)
    passthrough = found[-1]  # decoded again when sticky routing read a field: the last one answered
    doc = simple.encode_response(response)
    return PredictionType(
        model_name=response.model_name,
        model_version=response.model_version,
        request_id=response.id or "",
        predictions=JSON(doc["predictions"]),
        outputs=[
            OutputType(name=t.name, datatype=t.datatype, shape=list(t.data.shape), data=JSON(_values(t.data)))
            for t in response.outputs
        ],
        passthrough=None if passthrough is None else JSON(passthrough),
    )


@strawberry.type(name="ExplainedRow", description="The attributions of one record: base_value plus the "
                 "attributions add up to value.")
class ExplainedRowType:
    value: float = strawberry.field(description="The explained number (a probability, a margin or an output).")
    base_value: float
    attributions: JSON = strawberry.field(description="One number per input feature, by name.")
    class_: JSON | None = strawberry.field(
        name="class", default=None, description="A classifier's class of the record, whose value is explained.")


@strawberry.type(name="Explanation", description="Feature attributions (SHAP) of each record, as "
                 "POST /v1/models/NAME:explain answers them.")
class ExplanationType:
    model_name: str
    model_version: str
    method: str = strawberry.field(description="tree, linear or sampling.")
    output: str = strawberry.field(description="What is explained: probability, margin or an output's name.")
    explanations: list[ExplainedRowType]


async def _explain(info: Info, model: str, records: JSON) -> ExplanationType:
    explanations = info.context.explanations
    if explanations is None:
        raise ShipyardError("explanations are not set up on this server")
    if not isinstance(records, list) or not records:
        raise InvalidInput("records must be a non-empty list of rows (objects, or lists of values for a one-input "
                           "model)", field="records", got=type(records).__name__)
    try:
        doc = await explanations.explain(model, orjson.dumps({"instances": records}), rows_field="records")
    except InvalidInput as exc:
        if exc.field == "instances":  # the argument is called records here
            exc.field = "records"
        raise
    return ExplanationType(
        model_name=doc["model_name"], model_version=doc["model_version"], method=doc["method"], output=doc["output"],
        explanations=[ExplainedRowType(value=r["value"], base_value=r["base_value"],
                                       attributions=JSON(r["attributions"]),
                                       class_=JSON(r["class"]) if "class" in r else None)
                      for r in doc["explanations"]],
    )


#: What each root field needs (``security.principal.NEEDS``); the HTTP route needs any valid credential.
#: Every root field of ``Query`` must be here (a test enumerates the schema).
FIELD_SCOPES: dict[str, str] = {"models": "read", "model": "read", "predict": "predict", "explain": "predict"}


class Scoped(BasePermission):
    """A root field needs its scope of ``FIELD_SCOPES`` (nothing when authentication is off)."""

    def has_permission(self, source: Any, info: Info, **kwargs: Any) -> bool:
        principal = principal_var.get()
        need = FIELD_SCOPES.get(info.field_name, "admin")  # a field missing from the table is never open
        if principal is not None and not principal.allows(need):
            raise PermissionDenied(f"{principal.kind} '{principal.name}' needs the '{need}' scope for "
                                   f"'{info.field_name}'")
        return True


@strawberry.type
class Query:
    models: list[ModelType] = strawberry.field(resolver=_models, description="The models this server serves.",
                                               permission_classes=[Scoped])
    model: ModelType = strawberry.field(
        resolver=_model, description="One served model, by name (name@alias or name:VERSION must exist too).",
        permission_classes=[Scoped],
    )
    predict: PredictionType = strawberry.field(
        resolver=_predict, permission_classes=[Scoped],
        description="Predict with a model (name, name@alias or name:VERSION) for records: "
        'a list of objects such as [{"x": 1.0, "y": 2.0}] (lists of values for a one-input model).',
    )
    explain: ExplanationType = strawberry.field(
        resolver=_explain, permission_classes=[Scoped],
        description="Feature attributions (SHAP, extra 'explain') of each record for a model (name, name@alias or "
        "name:VERSION): the same answer as POST /v1/models/NAME:explain, at most explain_max_rows records.",
    )


def _values(arr: Any) -> list[Any]:
    flat: list[Any] = arr.reshape(-1).tolist()
    return [x.decode("utf-8", "replace") if isinstance(x, bytes) else x for x in flat]


def _spec(s: TensorSpec) -> TensorSpecType:
    return TensorSpecType(name=s.name, datatype=s.datatype, shape=list(s.shape), allow_nan=s.allow_nan)


def _signature(sig: Signature) -> SignatureType:
    return SignatureType(
        format=sig.format, inputs=[_spec(s) for s in sig.inputs], outputs=[_spec(s) for s in sig.outputs]
    )


def _version(mv: ModelVersion) -> VersionType:
    return VersionType(
        version=mv.version,
        flavor=mv.flavor,
        digest=mv.digest,
        created_at=mv.created_at,
        description=mv.description,
        tags=JSON(dict(mv.tags)),
        metrics=JSON(dict(mv.metrics)),
        signature=_signature(mv.signature),
    )
