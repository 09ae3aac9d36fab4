"""REST route of the drift reports: ``GET /v1/models/{name}/drift``.

Answers the newest reports the drift monitor recorded for a served model, per
version and arm (``?version=&arm=``; ``limit`` reports each, newest first, 1 by
default), each with its window, verdict and per-feature results (the stored
``DriftReport``). It reads the registry database, so it runs off the event loop.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import anyio.to_thread
import orjson
from starlette.requests import Request
from starlette.responses import Response

from shipyard.errors import InvalidInput, ModelNotFound
from shipyard.monitoring.drift_monitor import latest_results
from shipyard.registry.database import Database
from shipyard.serving.rest.openapi import MODEL_REF_PATTERN
from shipyard.serving.rest.routes import JSON, Body, Endpoint, Param
from shipyard.types import ModelRef

__all__ = ["drift_endpoints"]

_REF = re.compile(MODEL_REF_PATTERN.removeprefix("^").removesuffix("$"))
MAX_LIMIT = 1_000


def _whole(request: Request, name: str, default: int | None, top: int) -> int | None:
    text = request.query_params.get(name)
    if text is None:
        return default
    if not text.isdigit() or not 1 <= int(text[:12]) <= top:
        raise InvalidInput(f"{name} {text[:50]!r}: give a whole number from 1 to {top}", field=name,
                           expected=f"1..{top}", got=text[:50])
    return int(text)


def drift_endpoints(database: Database, *, served: Callable[[], Sequence[str]]) -> list[Endpoint]:
    """The drift endpoint over the reports in ``database``; ``served()`` names the models it answers for."""

    async def reports(request: Request) -> Response:
        text = request.path_params["name"]
        if not _REF.fullmatch(text):  # never a served model (and a NUL byte must not reach PostgreSQL)
            raise ModelNotFound(text[:200])
        ref = ModelRef.parse(text)
        if ref.name not in served():
            raise ModelNotFound(ref.name)
        version = _whole(request, "version", ref.version, 2**31 - 1)
        limit = _whole(request, "limit", 1, MAX_LIMIT) or 1
        arm = request.query_params.get("arm")
        if arm is not None and (len(arm) > 128 or "\x00" in arm):
            raise InvalidInput("arm: at most 128 characters", field="arm", got=arm[:50])
        rows = await anyio.to_thread.run_sync(lambda: latest_results(database, model=ref.name,
                                                                     limit_per_arm=limit))
        chosen = [{"version": r["version"], "arm": r["arm"], "start": r["start"], "end": r["end"], "rows": r["rows"],
                   "drifted": bool(r["drifted"]), "share": r["share"], "at": r["at"], "report": r["payload"]}
                  for r in rows if (version is None or r["version"] == version) and (arm is None or r["arm"] == arm)]
        return Response(orjson.dumps({"model": ref.name, "reports": chosen}), 200, media_type=JSON)

    return [
        Endpoint(("GET",), "/v1/models/{name}/drift", reports,
                 "The newest drift reports of a served model per version and arm: the window, whether the "
                 "dataset drifted, and per feature the test, statistic, p-value, effect, threshold and data quality",
                 Body("DriftReports"), errors=(400, 404, 500),
                 query=(Param("version", "Only this version", "integer"), Param("arm", "Only this arm"),
                        Param("limit", "Reports per version and arm, newest first (default 1, at most 1000)",
                              "integer")), scope="read"),
    ]
