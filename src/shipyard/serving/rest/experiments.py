"""REST routes of rollouts: ``GET /v1/experiments`` (every traffic policy) and ``/v1/experiments/{name}`` (its report).

Both read the registry database, so they run off the event loop. The report is
``rollout.report.experiment_report`` of the policy's current revision; a name
without a policy (or one that cannot be a model name) answers 404.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import anyio.to_thread
import orjson
from starlette.requests import Request
from starlette.responses import Response

from shipyard.errors import InvalidInput, InvalidOption
from shipyard.serving.rest.routes import JSON, Body, Endpoint, Param
from shipyard.types import NAME_PATTERN

if TYPE_CHECKING:
    from shipyard.serving.rest.app import RestApp

_NAME = re.compile(rf"^{NAME_PATTERN}$")


def _json(content: object) -> Response:
    return Response(orjson.dumps(content), 200, media_type=JSON)


def experiment_endpoints(app: RestApp) -> list[Endpoint]:
    """The rollout endpoints of ``app`` (its ``experiments()`` reads the database)."""

    async def listing(request: Request) -> Response:
        summaries = await anyio.to_thread.run_sync(app.experiments().summaries)
        return _json({"experiments": summaries})

    async def report(request: Request) -> Response:
        from shipyard.monitoring.predlog import parse_since
        from shipyard.rollout.experiments import ExperimentNotFound

        name = request.path_params["name"]
        if not _NAME.match(name):  # never a policy's name; and a NUL byte must not reach PostgreSQL
            raise ExperimentNotFound(name[:200])
        since = None
        text = request.query_params.get("since")
        if text is not None:
            try:
                since = parse_since(text)
            except InvalidOption:
                raise InvalidInput(f"since {text[:100]!r}: give a duration (30s, 15m, 2h, 7d) or an ISO-8601 time",
                                   field="since", expected="duration or ISO-8601 time", got=text[:100]) from None
        experiments = app.experiments()
        result = await anyio.to_thread.run_sync(lambda: experiments.report(name, since=since))
        return _json(result.to_dict())

    return [
        Endpoint(("GET",), "/v1/experiments", listing,
                 "Every traffic policy (split, canary, bandit): state, kind, revision and arms",
                 Body("ExperimentList"), scope="read"),
        Endpoint(("GET",), "/v1/experiments/{name}", report,
                 "The report of a model's traffic policy at its current revision: per-arm numbers, lifts "
                 "against the control, sample ratio check, time to a decision",
                 Body("ExperimentReport"), errors=(400, 404, 500),
                 query=(Param("since", "Only counts from windows starting after this: a duration ago (15m, "
                                       "2h) or an ISO-8601 time"),), scope="read"),
    ]
