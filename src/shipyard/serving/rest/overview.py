"""REST routes the dashboard's first screen and model page read (and anyone else may): the JSON behind every number.

* ``GET /v1/overview``: one row per served model: the version its name serves, aliases,
  traffic arms and weights, requests a second, error rate, p50/p99 against the latency
  budget, drift status, label coverage and realized metric, open alerts;
* ``GET /v1/models/{name}/summary``: the same traffic numbers per version, and a time series;
* ``GET /v1/models/{name}/versions``: every version with lineage, metrics, tags and signature;
* ``GET /v1/models/{name}/predictions``: the prediction log, filtered (``admin``: it holds inputs);
* ``GET /v1/alerts``: alert incidents (open ones by default);
* ``GET /v1/whoami``: the caller's name and scopes (what the dashboard shows actions by);
* ``POST /v1/experiments/{name}/pause|resume|abort|promote``: rollout actions (``admin``, audited
  through the traffic store's history and the audit log), as ``shipyard rollout pause`` etc.

Traffic numbers come from the prediction log (``monitoring/traffic_summary.py``): the fleet's
record of every request. A window is ``window`` seconds (default 300) ending at ``end`` (epoch
seconds, default now), so two reads of the same window agree. Everything here reads the
registry database or log files, so it runs off the event loop.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import anyio.to_thread
import orjson
from starlette.requests import Request
from starlette.responses import Response

from shipyard.errors import InvalidInput, InvalidOption, Kind, ModelNotFound, ShipyardError
from shipyard.security.principal import ANONYMOUS, current_actor, principal_var
from shipyard.serving.rest.routes import JSON, Body, Endpoint, Param
from shipyard.types import ModelRef

if TYPE_CHECKING:
    from shipyard.config import Settings
    from shipyard.rollout.experiments import Experiments
    from shipyard.serving.dataplane import DataPlane

__all__ = ["DEFAULT_WINDOW", "overview_endpoints"]

DEFAULT_WINDOW = 300.0
MAX_WINDOW = 90 * 86400.0
MAX_BUCKETS = 500
MAX_LIMIT = 1_000


class RolloutFinished(ShipyardError):
    """A rollout action on a rollout that already ended (promoted, aborted, rolled back): 409."""

    kind: ClassVar[Kind] = "conflict"

    def __init__(self, model: str, state: str, action: str) -> None:
        self.model = model
        self.state = state
        super().__init__(f"{model}'s rollout is {state}: nothing to {action}; start a new one instead")


def _json(content: object) -> Response:
    return Response(orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY), 200, media_type=JSON)


def _number(request: Request, name: str, default: float | None, low: float, high: float) -> float | None:
    text = request.query_params.get(name)
    if text is None:
        return default
    try:
        value = float(text[:40])
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or not low <= value <= high:
        raise InvalidInput(f"{name} {text[:40]!r}: give a number from {low:g} to {high:g}", field=name,
                           expected=f"{low:g}..{high:g}", got=text[:40])
    return value


def _integer(request: Request, name: str, default: int | None, low: int, high: int) -> int | None:
    text = request.query_params.get(name)
    if text is None:
        return default
    if not text.isdigit() or not low <= int(text[:12]) <= high:
        raise InvalidInput(f"{name} {text[:40]!r}: give a whole number from {low} to {high}", field=name,
                           expected=f"{low}..{high}", got=text[:40])
    return int(text)


def _window(request: Request) -> tuple[float, float]:
    seconds = _number(request, "window", DEFAULT_WINDOW, 1.0, MAX_WINDOW) or DEFAULT_WINDOW
    end = _number(request, "end", None, 0.0, 1e11)
    stop = time.time() if end is None else end
    return stop - seconds, stop


def _budget(tags: dict[str, str]) -> float | None:
    from shipyard.rollout.gates import LATENCY_TAG

    try:
        value = float(tags.get(LATENCY_TAG, ""))
    except ValueError:
        return None
    return value if math.isfinite(value) and value > 0 else None


def _realized(group: dict[str, Any]) -> tuple[str | None, float | None]:
    """The metric a row shows: accuracy for classifiers, MAE for regressors, else the first one."""
    metrics = group.get("metrics") or {}
    for name in ("accuracy", "mae"):
        if metrics.get(name) is not None:
            return name, metrics[name]
    for name, value in metrics.items():
        if value is not None:
            return name, value
    return None, None


def overview_endpoints(dp: DataPlane, experiments: Experiments, settings: Settings, *,
                       served: Callable[[], Sequence[str]], authentication: bool) -> list[Endpoint]:
    """The overview endpoints over ``dp``'s registry; ``served()`` names the models they answer for."""
    from shipyard.monitoring import traffic_summary

    registry = dp.repository.registry
    database = registry.database

    def served_name(text: str) -> str:
        try:
            name = ModelRef.parse(text).name
        except ShipyardError:
            raise ModelNotFound(text[:200]) from None
        if name not in served():
            raise ModelNotFound(name)
        return name

    def serving_ref(name: str) -> str:
        for m in dp.models():
            if m["name"] == name:
                return str(m["ref"])
        return name

    def model_row(name: str, start: float, end: float) -> dict[str, Any]:
        from shipyard.monitoring.alerts import AlertStore
        from shipyard.monitoring.drift_monitor import latest_results
        from shipyard.monitoring.quality import quality

        ref = serving_ref(name)
        try:
            version: int | None = registry.resolve(ref)
        except ShipyardError:
            version = None
        tags = registry.get(f"{name}:{version}").tags if version is not None else {}
        policy = experiments.store.get(name)
        if policy is not None and policy.state == "running":
            arms = [{"name": a.name, "target": a.target, "weight": a.weight, "role": a.role,
                     "version": _resolve(registry, name, a.target)} for a in policy.arms]
        else:
            arms = [{"name": "default", "target": ref, "weight": 1.0, "role": "primary", "version": version}]
        traffic = traffic_summary.summarize(traffic_summary.read_rows(settings, name, start=start, end=end),
                                            start=start, end=end)
        reports = latest_results(database, model=name, limit_per_arm=1)
        drift: dict[str, Any] = {"status": "no report", "share": None, "at": None}
        if reports:
            newest = max(reports, key=lambda r: r["at"])
            drift = {"status": "drifted" if any(r["drifted"] for r in reports) else "ok",
                     "share": max(float(r["share"]) for r in reports), "at": newest["at"]}
        realized: dict[str, Any] = {"metric": None, "value": None, "label_coverage": None, "labelled": 0}
        try:
            groups = quality(database, name, since=start, until=end, by=("version",))["groups"]
        except Exception:  # a registry without the feedback tables' rows still has an overview
            groups = []
        mine = [g for g in groups if g.get("version") == version] or groups[:1]
        if mine:
            metric, value = _realized(mine[0])
            realized = {"metric": metric, "value": value, "label_coverage": mine[0].get("coverage"),
                        "labelled": mine[0].get("labelled", 0)}
        incidents = AlertStore(database).list(open_only=True, model=name)
        return {
            "name": name, "ref": ref, "version": version, "aliases": registry.aliases(name),
            "policy": None if policy is None else {"kind": policy.kind, "state": policy.state,
                                                   "revision": policy.revision},
            "arms": arms, "traffic": traffic, "latency_budget_ms": _budget(tags),
            "drift": drift, "realized": realized,
            "alerts": {"open": len(incidents), "rules": sorted({i.rule for i in incidents})},
        }

    async def overview(request: Request) -> Response:
        start, end = _window(request)

        def read() -> dict[str, Any]:
            return {"start": start, "end": end, "window_seconds": end - start,
                    "prediction_log": traffic_summary.log_source(settings),
                    "models": [model_row(n, start, end) for n in sorted(served())]}

        return _json(await anyio.to_thread.run_sync(read))

    async def summary(request: Request) -> Response:
        text = request.path_params["name"]
        try:
            name = ModelRef.parse(text).name
        except ShipyardError:
            raise ModelNotFound(text[:200]) from None
        start, end = _window(request)
        buckets = _integer(request, "buckets", 0, 0, MAX_BUCKETS) or 0

        def read() -> dict[str, Any]:
            if name not in served():  # a graph's step models are registered, not served by name
                registry.versions(name)  # ModelNotFound for a name the registry does not hold
            rows = traffic_summary.read_rows(settings, name, start=start, end=end)
            return {"model": name, "prediction_log": traffic_summary.log_source(settings),
                    **traffic_summary.summarize(rows, start=start, end=end, buckets=buckets)}

        return _json(await anyio.to_thread.run_sync(read))

    async def versions(request: Request) -> Response:
        name = served_name(request.path_params["name"])

        def read() -> dict[str, Any]:
            aliases = registry.aliases(name)
            out = []
            for mv in registry.versions(name):
                d = mv.to_dict()
                out.append({k: d.get(k) for k in ("version", "flavor", "digest", "description", "tags", "metrics",
                                                  "lineage", "created_at", "signature")}
                           | {"aliases": sorted(a for a, v in aliases.items() if v == mv.version)})
            return {"model": name, "aliases": aliases, "versions": out}

        return _json(await anyio.to_thread.run_sync(read))

    async def predictions(request: Request) -> Response:
        from shipyard.monitoring.predlog import parse_since, read_predictions

        name = served_name(request.path_params["name"])
        q = request.query_params
        version = _integer(request, "version", None, 1, 2**31 - 1)
        limit = _integer(request, "limit", 50, 1, MAX_LIMIT) or 50
        outcome = q.get("outcome") or None
        if outcome is not None and (len(outcome) > 64 or not outcome.replace("_", "").isalnum()):
            raise InvalidInput("outcome: an outcome such as ok or invalid_input", field="outcome", got=outcome[:50])
        try:
            since = parse_since(q["since"]) if q.get("since") else None
        except InvalidOption:
            raise InvalidInput("since: give a duration (30s, 15m, 2h, 7d) or an ISO-8601 time", field="since",
                               got=q["since"][:100]) from None

        def read() -> dict[str, Any]:
            if traffic_summary.log_source(settings) is None:
                return {"model": name, "prediction_log": None, "records": []}
            # an outcome filter reads further back, so a rare outcome still fills the page
            records = read_predictions(settings, name, since=since,
                                       version=version,
                                       limit=limit if outcome is None else MAX_LIMIT * 10)
            if outcome is not None:
                records = [r for r in records if r.get("outcome") == outcome][-limit:]
            records.reverse()  # newest first
            return {"model": name, "prediction_log": traffic_summary.log_source(settings), "records": records}

        return _json(await anyio.to_thread.run_sync(read))

    async def alerts(request: Request) -> Response:
        from shipyard.monitoring.alerts import AlertStore

        q = request.query_params
        state = q.get("state", "open")
        if state not in ("open", "all"):
            raise InvalidInput("state: open or all", field="state", expected=["open", "all"], got=state[:50])
        model = q.get("model") or None
        if model is not None and (len(model) > 128 or "\x00" in model):
            raise InvalidInput("model: a model name of 1 to 128 characters", field="model", got=model[:50])
        found = await anyio.to_thread.run_sync(
            lambda: AlertStore(database).list(open_only=state == "open", model=model))
        return _json({"incidents": [i.to_dict() for i in found]})

    async def whoami(request: Request) -> Response:
        principal = principal_var.get() or ANONYMOUS
        return _json({"name": principal.name, "kind": principal.kind, "scopes": sorted(principal.scopes),
                      "authentication": authentication})

    def rollout_action(action: str) -> Callable[[Request], Any]:
        async def act(request: Request) -> Response:
            from shipyard.rollout import actions
            from shipyard.rollout.experiments import ExperimentNotFound
            from shipyard.serving.rest.admin import _as_caller

            name = request.path_params["name"]
            try:
                name = ModelRef.parse(name).name
            except ShipyardError:
                raise ExperimentNotFound(name[:200]) from None
            store = experiments.store
            reason = request.query_params.get("reason", "")[:500]

            def run() -> dict[str, Any]:
                actor = current_actor().name
                policy = store.get(name)
                if policy is None:
                    raise ExperimentNotFound(name)
                if policy.state in ("promoted", "aborted", "rolled_back"):
                    raise RolloutFinished(name, policy.state, action)
                if action == "promote":
                    stored, move = actions.promote(store, registry, name, None, actor=actor, reason=reason)
                    return {"model": name, "state": stored.state, "revision": stored.revision,
                            "alias": None if move is None else {"alias": move.alias, "version": move.version,
                                                                 "previous": move.previous}}
                state = {"pause": "paused", "resume": "running", "abort": "aborted"}[action]
                stored = actions.set_state(store, name, state, actor=actor, reason=reason)  # type: ignore[arg-type]
                return {"model": name, "state": stored.state, "revision": stored.revision, "alias": None}

            with _as_caller(request):
                return _json(await anyio.to_thread.run_sync(run))

        return act

    window_params = (Param("window", "Seconds the numbers cover (default 300)", "number"),
                     Param("end", "When the window ends, epoch seconds (default now)", "number"))
    lookup = (400, 404, 500)
    any_json = Body(None)
    endpoints = [
        Endpoint(("GET",), "/v1/overview", overview,
                 "One row per served model: version served, aliases, traffic arms, requests/s, error rate, "
                 "p50/p99 against the latency budget, drift status, label coverage and realized metric, open "
                 "alerts (traffic numbers from the prediction log)", any_json, errors=(400, 500),
                 query=window_params, scope="read"),
        Endpoint(("GET",), "/v1/models/{name}/summary", summary,
                 "A served (or registered: a graph's step) model's requests/s, errors and p50/p99 over a window, "
                 "per version and as a time series (from the prediction log)", any_json, errors=lookup,
                 query=(*window_params, Param("buckets", "Slices of the time series (0: none)", "integer")),
                 scope="read"),
        Endpoint(("GET",), "/v1/models/{name}/versions", versions,
                 "A served model's versions with lineage, metrics, tags, signature and the aliases on each",
                 any_json, errors=lookup, scope="read"),
        Endpoint(("GET",), "/v1/models/{name}/predictions", predictions,
                 "A served model's logged predictions, newest first, with inputs and outputs (admin: they hold "
                 "what callers sent)", any_json, errors=lookup,
                 query=(Param("version", "Only this version", "integer"),
                        Param("outcome", "Only this outcome (ok, invalid_input, ...)"),
                        Param("since", "Only after this: a duration ago (15m, 7d) or an ISO-8601 time"),
                        Param("limit", "At most this many (default 50)", "integer")), scope="admin"),
        Endpoint(("GET",), "/v1/alerts", alerts, "Alert incidents, newest first (open ones unless state=all)",
                 any_json, errors=(400, 500),
                 query=(Param("model", "Only this model's"), Param("state", "open (default) or all")), scope="read"),
        Endpoint(("GET",), "/v1/whoami", whoami, "The caller's name and scopes", any_json, scope="authenticated"),
    ]
    docs = {"pause": "Hold a model's rollout where it is", "resume": "Let a paused rollout go on",
            "abort": "End a model's rollout: all traffic back on the stable arm, no alias moved",
            "promote": "Move the stable arm's alias to the candidate's version (gates first) and end the rollout"}
    for action, doc in docs.items():
        endpoints.append(Endpoint(("POST",), f"/v1/experiments/{{name}}/{action}", rollout_action(action),
                                  f"{doc}; audited", any_json, errors=(400, 404, 409, 500),
                                  query=(Param("reason", "Why; kept in the policy's history"),), scope="admin"))
    return endpoints


def _resolve(registry: Any, name: str, target: str) -> int | None:
    """The version an arm's target (an alias or a version number) points at now; None if it points nowhere."""
    try:
        ref = f"{name}:{target}" if str(target).isdigit() else f"{name}@{target}"
        return int(registry.resolve(ref))
    except ShipyardError:
        return None
