"""REST routes of drift: ``GET /v1/models/{name}/drift`` and ``.../drift/distributions``.

Answers the newest reports the drift monitor recorded for a served model, per
version and arm (``?version=&arm=``; ``limit`` reports each, newest first, 1 by
default), each with its window, verdict and per-feature results (the stored
``DriftReport``). It reads the registry database, so it runs off the event loop.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import anyio.to_thread
import orjson
import sqlalchemy as sa
from starlette.requests import Request
from starlette.responses import Response

from shipyard.errors import InvalidInput, ModelNotFound
from shipyard.monitoring.drift_monitor import latest_results
from shipyard.monitoring.tables import drift_windows_t
from shipyard.registry.database import Database
from shipyard.serving.rest.openapi import MODEL_REF_PATTERN
from shipyard.serving.rest.routes import JSON, Body, Endpoint, Param
from shipyard.types import ModelRef

if TYPE_CHECKING:
    from shipyard.monitoring.drift.profile import FeatureProfile, Profile

__all__ = ["distributions", "drift_endpoints"]

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


def _labels(feature: FeatureProfile) -> list[str]:
    """A bin label per count: ``<= a``, ``(a, b]``, ``> z`` for numbers; the categories and "other"."""
    from shipyard.monitoring.drift.profile import NumericProfile

    if not isinstance(feature, NumericProfile):
        return [*feature.categories, "other"]
    e = [f"{x:.6g}" for x in feature.edges]
    if not e:
        return ["all"]
    return [f"<= {e[0]}", *(f"({a}, {b}]" for a, b in zip(e, e[1:], strict=False)), f"> {e[-1]}"]


def _shares(counts: Sequence[int]) -> list[float | None]:
    total = sum(counts)
    return [None if total == 0 else round(c / total, 6) for c in counts]


def distributions(database: Database, profiles: Callable[[str, int], Profile | None], *, model: str,
                  version: int | None, arm: str | None, start: int | None,
                  window_seconds: float) -> dict[str, Any]:
    """Each feature's reference and window shares per bin for one window of ``model`` (see the module).

    Without ``version`` the newest window's version is taken (of those, the one with most rows);
    without ``start`` that version's newest window; without ``arm`` its arms are summed too.

    Raises:
        InvalidInput: no such window, or the version has no reference profile.
    """
    from shipyard.monitoring.drift.profile import NumericProfile
    from shipyard.monitoring.drift.window import Window

    if version is not None and profiles(model, version) is None:
        raise NoProfile(model, version)
    w = drift_windows_t.c
    where = [w.model == model]
    if version is not None:
        where.append(w.version == version)
    if arm is not None:
        where.append(w.arm == arm)
    if start is not None:
        where.append(w.start == start)
    with database.connect() as conn:
        newest = conn.execute(sa.select(w.start, w.version).where(*where).group_by(w.start, w.version)
                              .order_by(w.start.desc(), sa.func.sum(w.rows).desc(), w.version).limit(1)).first()
        if newest is None:
            said = "".join(f" {k} {v}" for k, v in (("version", version), ("arm", arm), ("start", start))
                           if v is not None)
            raise ModelNotFoundWindow(model, said)
        start, version = int(newest[0]), int(newest[1])
        rows = conn.execute(sa.select(w.arm, w.payload).where(*where, w.start == start, w.version == version)
                            .order_by(w.arm, w.replica)).all()
    profile = profiles(model, version)
    if profile is None:
        raise NoProfile(model, version)
    window: Window | None = None
    for _, payload in rows:
        one = Window.from_dict(profile, payload)
        window = one if window is None else window.merge(one)
    assert window is not None
    features = []
    for side, group in (("input", profile.inputs), ("output", profile.outputs)):
        for f in group:
            reference = [int(c) for c in f.counts]
            current = [int(c) for c in window.counts(f.name)]
            features.append({
                "feature": f.name, "side": side, "kind": f.kind, "labels": _labels(f),
                "edges": list(f.edges) if isinstance(f, NumericProfile) else None,
                "categories": None if isinstance(f, NumericProfile) else list(f.categories),
                "reference": {"counts": reference, "shares": _shares(reference), "rows": sum(reference)},
                "current": {"counts": current, "shares": _shares(current), "rows": sum(current)}})
    return {"model": model, "version": version, "arms": sorted({a for a, _ in rows}), "start": start,
            "end": int(start + window_seconds), "rows": window.rows, "reference_rows": profile.rows,
            "features": features}


class ModelNotFoundWindow(ModelNotFound):
    """The model has no drift window (matching the filters) yet."""

    def __init__(self, model: str, said: str) -> None:
        super().__init__(model)
        self.message = (f"model '{model}' has no drift window{' with' + said if said else ''} yet: windows are "
                        "written while a version with a reference profile serves traffic")
        self.args = (self.message,)


class NoProfile(ModelNotFound):
    """The version has no reference profile, so its inputs are not binned."""

    def __init__(self, model: str, version: int) -> None:
        super().__init__(model, version)
        self.message = (f"model '{model}' version {version} has no reference profile (register it with "
                        "reference data to monitor its drift)")
        self.args = (self.message,)


def drift_endpoints(database: Database, *, served: Callable[[], Sequence[str]],
                    profiles: Callable[[str, int], Profile | None] | None = None,
                    window_seconds: float = 300.0) -> list[Endpoint]:
    """The drift endpoints over the reports and windows in ``database``; ``served()`` names the models they
    answer for; ``profiles`` gives a version's reference profile (no distributions route without it)."""

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

    async def drawn(request: Request) -> Response:
        text = request.path_params["name"]
        if not _REF.fullmatch(text):
            raise ModelNotFound(text[:200])
        ref = ModelRef.parse(text)
        if ref.name not in served():
            raise ModelNotFound(ref.name)
        version = _whole(request, "version", ref.version, 2**31 - 1)
        start = _whole(request, "start", None, 2**62)
        arm = request.query_params.get("arm")
        if arm is not None and (len(arm) > 128 or "\x00" in arm):
            raise InvalidInput("arm: at most 128 characters", field="arm", got=arm[:50])
        assert profiles is not None
        doc = await anyio.to_thread.run_sync(lambda: distributions(
            database, profiles, model=ref.name, version=version, arm=arm, start=start,
            window_seconds=window_seconds))
        return Response(orjson.dumps(doc), 200, media_type=JSON)

    more = [] if profiles is None else [
        Endpoint(("GET",), "/v1/models/{name}/drift/distributions", drawn,
                 "One drift window of a served model (the newest by default), per feature: the bin labels "
                 "(numeric bins or categories), and the reference's and the window's counts and shares per bin",
                 Body(None), errors=(400, 404, 500),
                 query=(Param("version", "This version (default: the newest window's)", "integer"),
                        Param("arm", "Only this arm (default: the version's arms summed)"),
                        Param("start", "The window starting at this epoch second (default: the newest)",
                              "integer")), scope="read")]
    return [*more,
        Endpoint(("GET",), "/v1/models/{name}/drift", reports,
                 "The newest drift reports of a served model per version and arm: the window, whether the "
                 "dataset drifted, and per feature the test, statistic, p-value, effect, threshold and data quality",
                 Body("DriftReports"), errors=(400, 404, 500),
                 query=(Param("version", "Only this version", "integer"), Param("arm", "Only this arm"),
                        Param("limit", "Reports per version and arm, newest first (default 1, at most 1000)",
                              "integer")), scope="read"),
    ]
