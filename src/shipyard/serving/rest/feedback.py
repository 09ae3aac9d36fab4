"""REST routes of feedback: ``POST /v1/feedback`` and ``GET /v1/models/{name}/quality``.

``POST /v1/feedback`` takes ``{"feedback": [item, ...]}`` (1 to ``MAX_ITEMS`` items,
each ``{prediction_id | request_id, row?, label | reward, time?, source?}``) and is
all-or-nothing about what it cannot apply:

* a body or an item that cannot be read: **400** naming the field (``feedback[3].label``),
  nothing applied;
* any item naming a prediction or request the server does not keep: **404**
  (``FeedbackNotFound``, ``field`` = the first unknown item), nothing applied; the
  message lists the unknown items. Resending the known ones alone is safe (idempotent);
* otherwise **200** with one result per item, in order: ``accepted``, ``duplicate``
  (already received from this source: nothing changed) or ``late`` (after the join
  window: stored, never counted), and the number of rows it was stored for.

``GET /v1/models/{name}/quality`` answers ``monitoring.quality.quality`` for a
served model, grouped by version and arm (``?version=&arm=&since=&until=``; since
and until are durations ago or ISO-8601 times and bound the prediction time).
Both read the database, so they run off the event loop.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import anyio.to_thread
import orjson
from starlette.requests import Request
from starlette.responses import Response

from shipyard.errors import InvalidInput, InvalidOption, ModelNotFound
from shipyard.monitoring.feedback import OUTCOMES, FeedbackStore, parse_items
from shipyard.protocol.json_body import parse_json
from shipyard.serving.rest.body import check_json_type, read_body
from shipyard.serving.rest.openapi import MODEL_REF_PATTERN
from shipyard.serving.rest.routes import JSON, Body, Endpoint, Param
from shipyard.types import ModelRef

__all__ = ["feedback_endpoints"]

_REF = re.compile(MODEL_REF_PATTERN.removeprefix("^").removesuffix("$"))


def _json(content: object) -> Response:
    return Response(orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY), 200, media_type=JSON)


def _time_param(request: Request, name: str) -> float | None:
    from shipyard.monitoring.predlog import parse_since

    text = request.query_params.get(name)
    if text is None:
        return None
    try:
        return parse_since(text)
    except (InvalidOption, ValueError, OverflowError):
        raise InvalidInput(f"{name} {text[:100]!r}: give a duration ago (30s, 15m, 2h, 7d) or an ISO-8601 time",
                           field=name, expected="duration or ISO-8601 time", got=text[:100]) from None


def feedback_endpoints(store: FeedbackStore, *, served: Callable[[], Sequence[str]], max_body_bytes: int,
                       flush: Callable[[], None] | None = None) -> list[Endpoint]:
    """The feedback endpoints over ``store``; ``served()`` names the models quality is reported for."""

    async def submit(request: Request) -> Response:
        body = await read_body(request, max_body_bytes)
        check_json_type(request, False)
        items = parse_items(parse_json(body))
        outcomes = await anyio.to_thread.run_sync(lambda: store.submit(items, all_or_nothing=True))
        counts: Counter[str] = Counter(o.outcome for o in outcomes)
        return _json({"results": [o.to_dict() for o in outcomes],
                      "counts": {k: counts.get(k, 0) for k in OUTCOMES}})

    async def report(request: Request) -> Response:
        from shipyard.monitoring.quality import quality

        text = request.path_params["name"]
        if not _REF.fullmatch(text):  # never a served model (and a NUL byte must not reach PostgreSQL)
            raise ModelNotFound(text[:200])
        ref = ModelRef.parse(text)
        if ref.name not in served():
            raise ModelNotFound(ref.name)
        q = request.query_params
        version: int | None = ref.version
        if q.get("version") is not None:
            v = q["version"]
            if not v.isdigit() or not 1 <= int(v[:12]) < 2**31:
                raise InvalidInput(f"version {v[:50]!r}: give a version number", field="version",
                                   expected="a whole number from 1", got=v[:50])
            version = int(v)
        arm = q.get("arm")
        if arm is not None and (len(arm) > 128 or "\x00" in arm):
            raise InvalidInput("arm: at most 128 characters", field="arm", got=arm[:50])
        since, until = _time_param(request, "since"), _time_param(request, "until")
        result: dict[str, Any] = await anyio.to_thread.run_sync(lambda: quality(
            store.database, ref.name, version=version, arm=arm, since=since, until=until, flush=flush))
        return _json(result)

    return [
        Endpoint(("POST",), "/v1/feedback", submit,
                 "Labels or rewards of earlier predictions, by prediction_id or request_id: 200 with one outcome "
                 "per item (accepted, duplicate, late); 404 and nothing applied when any id is unknown",
                 Body("FeedbackResponse"), Body("FeedbackRequest"), errors=(400, 404, 413, 415, 500), scope="feedback"),
        Endpoint(("GET",), "/v1/models/{name}/quality", report,
                 "Realized metrics of a served model per version and arm, from the feedback joined to its "
                 "predictions: accuracy, precision, recall, F1, ROC AUC (classifiers); MAE, RMSE (regressors); "
                 "label coverage and delay", Body("Quality"), errors=(400, 404, 500),
                 query=(Param("version", "Only this version", "integer"), Param("arm", "Only this arm"),
                        Param("since", "Predictions made after this: a duration ago (15m, 7d) or an ISO-8601 time"),
                        Param("until", "Predictions made before this: a duration ago or an ISO-8601 time")),
                 scope="read"),
    ]
