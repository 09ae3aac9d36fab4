"""The thinnest correct endpoint: a bare Starlette route calling the same model's predict.

The baseline of bench/serve.py: the same HTTP stack as shipyard (uvicorn with httptools
and uvloop, no access log), the same request body as shipyard's /v1 API, and nothing
else: ``orjson.loads``, ``numpy.asarray(body["instances"])``, ``model.predict``,
``orjson.dumps``. No validation, no batching, no request ids, no metrics.

The input is what the model's signature asks for: a NumPy array for an array
signature (the cheapest correct decode); a pandas DataFrame only for a model that
needs column names (``BARE_INPUT=frame``, which bench/serve.py says beside its rows).

    SHIPYARD_HOME=... BARE_MODEL=rf python -m uvicorn bench.bare_app:app --port 8001 [--workers 2]
"""

from __future__ import annotations

import os

import numpy as np
import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

import shipyard

_model = shipyard.load(os.environ["BARE_MODEL"]).runtime.model  # type: ignore[attr-defined]

if os.environ.get("BARE_INPUT", "array") == "frame":
    import pandas as pd

    def _decode(instances: list) -> object:  # type: ignore[type-arg]
        return pd.DataFrame(instances)
else:

    def _decode(instances: list) -> object:  # type: ignore[type-arg]
        return np.asarray(instances)


async def predict(request: Request) -> Response:
    body = orjson.loads(await request.body())
    predictions = _model.predict(_decode(body["instances"]))
    return Response(orjson.dumps({"predictions": predictions.tolist()}), media_type="application/json")


async def ready(request: Request) -> Response:
    return Response(b'{"ready":true}', media_type="application/json")


app = Starlette(routes=[Route("/predict", predict, methods=["POST"]), Route("/v2/health/ready", ready)])
