"""The framework floor: a bare Starlette endpoint calling the same model's predict.

Used by bench/serve.py as baseline (b): same HTTP stack as shipyard (uvicorn with
httptools and uvloop, no access log, one process), the same request body as
shipyard's /v1 API, and nothing else: no validation, no batching, no request ids.

    SHIPYARD_HOME=... BARE_MODEL=rf python -m uvicorn bench.bare_app:app --port 8001
"""

from __future__ import annotations

import os

import orjson
import pandas as pd
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

import shipyard

_model = shipyard.load(os.environ["BARE_MODEL"]).runtime.model  # type: ignore[attr-defined]


async def predict(request: Request) -> Response:
    body = orjson.loads(await request.body())
    frame = pd.DataFrame(body["instances"])
    return Response(orjson.dumps({"predictions": _model.predict(frame).tolist()}), media_type="application/json")


async def ready(request: Request) -> Response:
    return Response(b'{"ready":true}', media_type="application/json")


app = Starlette(routes=[Route("/predict", predict, methods=["POST"]), Route("/v2/health/ready", ready)])
