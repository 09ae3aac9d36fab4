"""REST route of the retraining runs: ``GET /v1/retrains``.

Answers the newest runs (``?model=`` one model's, ``?state=`` in one state, ``limit``
at most, 20 by default), each with its state, trigger and evidence, parent and candidate
versions, dataset manifest, gates and reason; the log is left out (``shipyard retrain
status`` shows it). It reads the registry database, so it runs off the event loop.
"""

from __future__ import annotations

import anyio.to_thread
import orjson
from starlette.requests import Request
from starlette.responses import Response

from shipyard.errors import InvalidInput
from shipyard.registry.database import Database
from shipyard.retraining.store import STATES, RunStore
from shipyard.serving.rest.routes import JSON, Body, Endpoint, Param

__all__ = ["retrain_endpoints"]

MAX_LIMIT = 1_000


def retrain_endpoints(database: Database) -> list[Endpoint]:
    """The retraining runs endpoint over the runs in ``database``."""
    store = RunStore(database)

    async def runs(request: Request) -> Response:
        model = request.query_params.get("model")
        if model is not None and (not model or len(model) > 128 or "\x00" in model):
            raise InvalidInput("model: a model name of 1 to 128 characters", field="model", got=model[:50])
        state = request.query_params.get("state")
        if state is not None and state not in STATES:
            raise InvalidInput(f"state: one of {', '.join(STATES)}", field="state", expected=list(STATES),
                               got=state[:50])
        text = request.query_params.get("limit", "20")
        if not text.isdigit() or not 1 <= int(text[:12]) <= MAX_LIMIT:
            raise InvalidInput(f"limit {text[:50]!r}: give a whole number from 1 to {MAX_LIMIT}", field="limit",
                               expected=f"1..{MAX_LIMIT}", got=text[:50])
        found = await anyio.to_thread.run_sync(lambda: store.list(model, state=state, limit=int(text)))
        return Response(orjson.dumps({"runs": [r.to_dict(with_log=False) for r in found]}), 200, media_type=JSON)

    return [
        Endpoint(("GET",), "/v1/retrains", runs,
                 "Retraining runs, newest first: state, trigger and evidence, parent and candidate versions, "
                 "the dataset's manifest, the gates' verdicts and the reason",
                 Body("RetrainRuns"), errors=(400, 500),
                 query=(Param("model", "Only this model's runs"), Param("state", "Only runs in this state"),
                        Param("limit", "At most this many runs (default 20, at most 1000)", "integer")),
                 scope="read"),
    ]
