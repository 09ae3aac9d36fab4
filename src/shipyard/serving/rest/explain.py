"""``POST /v1/models/{name}:explain``: feature attributions of each row (``shipyard.explain``, extra ``explain``).

The body is a ``:predict`` body (records or columns), checked against the signature of
the version the name is served as. At most ``explain_max_rows`` rows per request (400
above it): an explanation costs far more than a prediction. The explainer of a version
is built on its first request (the check set is its background data) and kept while the
server runs; the work runs on a worker thread, off the event loop.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio.to_thread
import orjson
from starlette.requests import Request
from starlette.responses import Response

from shipyard.errors import InvalidInput
from shipyard.protocol import simple
from shipyard.serving.rest.body import check_json_type, read_body
from shipyard.serving.rest.routes import BODY_ERRORS, JSON, Body, Endpoint

if TYPE_CHECKING:
    from shipyard.explain import Explainer
    from shipyard.registry import LoadedModel
    from shipyard.serving.dataplane import DataPlane

__all__ = ["explain_endpoints"]


def explain_endpoints(dp: DataPlane, *, max_rows: int, max_body_bytes: int) -> list[Endpoint]:
    """The explain endpoint over ``dp``'s models; at most ``max_rows`` rows a request."""
    explainers: dict[tuple[str, int, str], Explainer] = {}

    def explainer_of(model: LoadedModel) -> Explainer:
        from shipyard.explain import Explainer  # shap (and numba) load only once explanations are asked for

        key = (model.name, model.version.version, model.version.digest)
        found = explainers.get(key)
        if found is None:
            check = dp.repository.registry.check_set(model.version)
            found = explainers[key] = Explainer(model, None if check is None else check.inputs)
        return found

    async def explain(request: Request) -> Response:
        body = await read_body(request, max_body_bytes)
        check_json_type(request, False)
        model = await dp.resolve(request.path_params["name"])
        decoded, _ = simple.decode_predict(body, model.signature)
        inputs = model.signature.validate(model.signature.split_extra({t.name: t.data for t in decoded.inputs})[0])
        rows = len(next(iter(inputs.values()))) if inputs else 0
        if rows > max_rows:
            raise InvalidInput(f"{rows} rows asked to be explained; at most {max_rows} per request "
                               "(explain_max_rows / SHIPYARD_EXPLAIN_MAX_ROWS)", field="rows",
                               expected=f"<= {max_rows}", got=rows)
        explainer = await anyio.to_thread.run_sync(explainer_of, model)
        result = await anyio.to_thread.run_sync(explainer.explain, inputs)
        content = {"model_name": model.name, "model_version": str(model.version.version), **result.to_json()}
        return Response(orjson.dumps(content), 200, media_type=JSON)

    return [
        Endpoint(("POST",), "/v1/models/{name}:explain", explain,
                 "Feature attributions (SHAP) of each row: base value plus attributions equal the explained value",
                 Body("ExplainResponse"), Body("PredictRequest"), errors=BODY_ERRORS, scope="predict"),
    ]
