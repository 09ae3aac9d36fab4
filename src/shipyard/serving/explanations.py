"""Explanations served by one server: the explainer of each version, built once, and the row limit.

One service under ``POST /v1/models/{name}:explain`` and GraphQL's ``explain`` field, so
both answer the same thing: the body is a ``:predict`` body (records or columns),
checked against the signature of the version the name is served as; at most
``max_rows`` rows per request (400 above it: an explanation costs far more than a
prediction). The explainer of a version is built on its first request (the check set
is its background data) and kept while the server runs; the work runs on a worker
thread, off the event loop.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio.to_thread

from shipyard.errors import InvalidInput
from shipyard.protocol import simple

if TYPE_CHECKING:
    from shipyard.explain import Explainer
    from shipyard.registry import LoadedModel
    from shipyard.serving.dataplane import DataPlane

__all__ = ["Explanations"]


class Explanations:
    """Explains predictions of ``dataplane``'s models, at most ``max_rows`` rows a request."""

    def __init__(self, dataplane: DataPlane, *, max_rows: int) -> None:
        self.dataplane = dataplane
        self.max_rows = max_rows
        self._explainers: dict[tuple[str, int, str], Explainer] = {}

    def _explainer_of(self, model: LoadedModel) -> Explainer:
        from shipyard.explain import Explainer  # shap (and numba) load only once explanations are asked for

        key = (model.name, model.version.version, model.version.digest)
        found = self._explainers.get(key)
        if found is None:
            check = self.dataplane.repository.registry.check_set(model.version)
            found = self._explainers[key] = Explainer(model, None if check is None else check.inputs)
        return found

    async def explain(self, name: str, body: bytes, *, rows_field: str = "rows") -> dict[str, Any]:
        """The explanation of the rows of a ``:predict`` body for the model ``name`` serves, as JSON.

        Args:
            name: a served name (``name@alias`` and ``name:VERSION`` too).
            body: a ``:predict`` body (``instances`` or ``inputs``).
            rows_field: the field a refusal for too many rows names.
        """
        model = await self.dataplane.resolve(name)
        decoded, _ = simple.decode_predict(body, model.signature)
        inputs = model.signature.validate(model.signature.split_extra({t.name: t.data for t in decoded.inputs})[0])
        rows = len(next(iter(inputs.values()))) if inputs else 0
        if rows > self.max_rows:
            raise InvalidInput(f"{rows} rows asked to be explained; at most {self.max_rows} per request "
                               "(explain_max_rows / SHIPYARD_EXPLAIN_MAX_ROWS)", field=rows_field,
                               expected=f"<= {self.max_rows}", got=rows)
        explainer = await anyio.to_thread.run_sync(self._explainer_of, model)
        result = await anyio.to_thread.run_sync(explainer.explain, inputs)
        return {"model_name": model.name, "model_version": str(model.version.version), **result.to_json()}
