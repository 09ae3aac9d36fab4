"""REST routes of admin actions (the ``admin`` scope): alias moves and the audit log.

``PUT /v1/models/{name}/aliases/{alias}`` runs the promotion gates first, as ``shipyard alias``
does; a failed gate refuses the move (409, audited as refused) unless ``"force": true``.
``DELETE`` removes an alias and ``POST .../rollback`` moves it back; neither is gated. Every move
is written to the audit log in its own transaction by the registry, with the caller's principal and
address. ``GET /v1/audit`` reads the log (a recorded configuration's text left out: it names paths) and
``GET /v1/audit/verify`` checks its hash chain.

The registry and the gates block (database, model loading), so they run off the event loop.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import anyio.to_thread
import orjson
from starlette.requests import Request
from starlette.responses import Response

from shipyard.errors import InvalidInput, InvalidOption, PromotionRefused
from shipyard.protocol.json_body import parse_json
from shipyard.registry.model import AliasMove
from shipyard.security.principal import ANONYMOUS, acting_as, current_actor, principal_var, source_var
from shipyard.serving.rest.body import read_body
from shipyard.serving.rest.routes import JSON, Body, Endpoint, Param

if TYPE_CHECKING:
    from shipyard.serving.rest.app import RestApp


def _json(content: object) -> Response:
    return Response(orjson.dumps(content), 200, media_type=JSON)


def _move(move: AliasMove) -> dict[str, Any]:
    return asdict(move)


@contextlib.contextmanager
def _as_caller(request: Request) -> Iterator[None]:
    """The audit log's actor: the checked principal, or (authentication off) anonymous at the client address."""
    if principal_var.get() is not None:
        yield
        return
    client = request.scope.get("client")
    with acting_as(ANONYMOUS, source_var.get() or (f"{client[0]}:{client[1]}" if client else "server")):
        yield


def _shown(entry: dict[str, Any]) -> dict[str, Any]:
    """An audit entry as the network sees it: a recorded configuration's text (paths, hosts) stays on the
    registry's side; its sha256 and changed keys are shown. ``shipyard audit --json`` shows all of it."""
    details = entry.get("details")
    if isinstance(details, dict) and "yaml" in details:
        entry["details"] = {**details, "yaml": None}
    return entry


def _alias_request(body: bytes) -> tuple[int, bool]:
    doc = parse_json(body)
    if not isinstance(doc, dict):
        raise InvalidInput('the body must be a JSON object like {"version": 3}', field="body",
                           got=type(doc).__name__)
    unknown = sorted(set(doc) - {"version", "force"})
    if unknown:
        raise InvalidInput(f"unknown field '{unknown[0][:50]}'; it takes version and force", field=unknown[0][:50])
    version, force = doc.get("version"), doc.get("force", False)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise InvalidInput("version must be a version number (an integer from 1)", field="version",
                           expected="integer >= 1", got=version)
    if not isinstance(force, bool):
        raise InvalidInput("force must be true or false", field="force", expected="boolean", got=force)
    return version, force


def admin_endpoints(app: RestApp) -> list[Endpoint]:
    """The admin endpoints of ``app``, over its data plane's registry."""
    registry = app.dp.repository.registry

    async def aliases(request: Request) -> Response:
        name = request.path_params["name"]

        def read() -> dict[str, Any]:
            registry.versions(name)  # ModelNotFound for an unknown model
            return {"model": name, "aliases": registry.aliases(name),
                    "history": [_move(m) for m in registry.alias_history(name)]}

        return _json(await anyio.to_thread.run_sync(read))

    async def set_alias(request: Request) -> Response:
        from shipyard.rollout.actions import record_refusal
        from shipyard.rollout.gates import log_outcome, promotion_gates

        name, alias = request.path_params["name"], request.path_params["alias"]
        version, force = _alias_request(await read_body(request, app.max_body_bytes))

        def move() -> AliasMove:
            actor = current_actor().name
            report = promotion_gates(registry, name, alias, version)
            log_outcome(report, actor=actor, forced=force and not report.passed)
            if not report.passed and not force:
                record_refusal(registry.database, report)
                raise PromotionRefused(f"{name}@{alias}", version, report.reasons())
            return registry.set_alias(name, alias, version, actor=actor, note=report.note(forced=force))

        with _as_caller(request):
            return _json(_move(await anyio.to_thread.run_sync(move)))

    async def delete_alias(request: Request) -> Response:
        name, alias = request.path_params["name"], request.path_params["alias"]
        with _as_caller(request):
            move = await anyio.to_thread.run_sync(
                lambda: registry.delete_alias(name, alias, actor=current_actor().name))
        return _json(_move(move))

    async def alias_route(request: Request) -> Response:
        return await (set_alias if request.method == "PUT" else delete_alias)(request)

    async def rollback(request: Request) -> Response:
        name, alias = request.path_params["name"], request.path_params["alias"]
        with _as_caller(request):
            move = await anyio.to_thread.run_sync(
                lambda: registry.rollback(name, alias, actor=current_actor().name))
        return _json(_move(move))

    async def audit(request: Request) -> Response:
        from shipyard.monitoring.predlog import parse_since
        from shipyard.security.audit import AuditLog

        q = request.query_params
        try:
            since = parse_since(q["since"]) if q.get("since") else None
        except InvalidOption:
            raise InvalidInput("since: give a duration (30s, 15m, 2h, 7d) or an ISO-8601 time", field="since",
                               got=q["since"][:100]) from None
        limit_text = q.get("limit", "100")
        if not limit_text.isdigit() or not 1 <= int(limit_text) <= 10_000:
            raise InvalidInput("limit must be an integer from 1 to 10000", field="limit", got=limit_text[:20])
        log = AuditLog(registry.database)
        events = await anyio.to_thread.run_sync(lambda: log.read(
            action=q.get("action") or None, target=q.get("target") or None, actor=q.get("actor") or None,
            since=since, limit=int(limit_text)))
        return _json({"entries": [_shown(e.to_dict()) for e in events]})

    async def verify(request: Request) -> Response:
        from shipyard.security.audit import AuditLog

        report = await anyio.to_thread.run_sync(AuditLog(registry.database).verify)
        return _json(report.to_dict())

    move_errors = (400, 404, 409, 500)
    return [
        Endpoint(("GET",), "/v1/models/{name}/aliases", aliases, "A model's aliases and every past move",
                 Body("AliasList"), errors=(400, 404, 500), scope="admin"),
        # one route for both methods, so a 405 on the path names both in Allow
        Endpoint(("PUT", "DELETE"), "/v1/models/{name}/aliases/{alias}", alias_route,
                 "PUT: point an alias at a version after the promotion gates pass (409 when one fails, unless "
                 "force); DELETE: remove it. Audited", Body("AliasMove"), Body("AliasRequest"),
                 errors=(*move_errors, 413, 415), scope="admin"),
        Endpoint(("POST",), "/v1/models/{name}/aliases/{alias}/rollback", rollback,
                 "Move an alias back to the version it pointed at before its latest move; audited",
                 Body("AliasMove"), errors=move_errors, scope="admin"),
        Endpoint(("GET",), "/v1/audit", audit, "The audit log, newest first", Body("AuditList"),
                 errors=(400, 500),
                 query=(Param("action", "Only this action (alias: every alias.* action)"),
                        Param("target", "Only this target (a model name: its versions and aliases too)"),
                        Param("actor", "Only what this key, token subject or user did"),
                        Param("since", "Only entries after this: a duration ago (15m, 7d) or an ISO-8601 time"),
                        Param("limit", "At most this many entries (default 100)", "integer")),
                 scope="admin"),
        Endpoint(("GET",), "/v1/audit/verify", verify,
                 "Check the audit log's hash chain: intact, or the first broken entry and why",
                 Body("AuditVerify"), scope="admin"),
    ]
