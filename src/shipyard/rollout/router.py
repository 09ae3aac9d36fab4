"""Routers: between a served name and the version(s) it can reach.

The data plane asks its router once per request, before anything else, and
uses the answer for decoding, validation, prediction and every observer. The
default ``AliasRouter`` keeps the behaviour of a server without traffic
policies; policy routers (splits, canaries, shadows) implement the same
protocol and read the same ``RequestContext``.
"""

from __future__ import annotations

import asyncio
import logging
import random as _random
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import anyio.to_thread

from shipyard._periodic import every
from shipyard.context import RequestContext
from shipyard.rollout.policy import Arm, TrafficPolicy, choose, copied, effective_weights
from shipyard.types import ModelRef

if TYPE_CHECKING:
    from shipyard.hosting.repository import ModelRepository
    from shipyard.rollout.store import TrafficStore

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Route:
    """Where one request goes."""

    ref: ModelRef
    """The reference the repository resolves (an alias is followed to its current version)."""
    label: str
    """How the request reached it, for metrics and the prediction log: the arm of a traffic policy, or
    the alias, version number or ``latest`` the name was served as."""
    shadows: tuple[tuple[str, ModelRef], ...] = ()
    """Shadow arms (name, reference) that get a copy of this request; their answers are never returned."""
    revision: int | None = None
    """The traffic policy's revision that chose the arm (None: no policy)."""
    key_field: str | None = None
    """Set when sticky routing needs an input field's value: route again with it as ``ctx.route_key``."""


class Router(Protocol):
    def route(self, name: str, version: str | None, ctx: RequestContext) -> Route:
        """The route of a request for ``name`` (``demo``, ``demo@alias``, ``demo:3``) and an optional version.

        Raises ModelNotServed for a name the server does not serve, InvalidInput or
        ModelNotFound for a version that cannot exist. Never does I/O.
        """
        ...

    def live_refs(self) -> list[ModelRef]:
        """Every reference traffic can reach without naming a version: what must stay loaded."""
        ...


class AliasRouter:
    """A name goes to what the server was started with for it; an explicit alias or version goes there."""

    def __init__(self, repository: ModelRepository) -> None:
        self.repository = repository

    def route(self, name: str, version: str | None, ctx: RequestContext) -> Route:
        ref = self.repository.ref_for(name, version)
        if ref.alias is not None:
            label = ref.alias
        elif ref.version is not None:
            label = str(ref.version)
        else:
            label = "latest"
        return Route(ref, label)

    def live_refs(self) -> list[ModelRef]:
        return list(self.repository.defaults.values())


@dataclass(frozen=True)
class _Active:
    """A policy as the request path uses it: effective weights worked out once, when it is switched in."""

    policy: TrafficPolicy
    primaries: tuple[Arm, ...]
    shadows: tuple[Arm, ...]
    refs: dict[str, ModelRef]


def _activate(policy: TrafficPolicy) -> _Active:
    primaries = policy.with_weights(effective_weights(policy)).primaries
    shadows = policy.shadows if policy.state in ("running", "paused") else ()
    return _Active(policy, primaries, shadows, {a.name: a.ref(policy.model) for a in policy.arms})


class PolicyRouter:
    """Routes served names that have a traffic policy by it; every other request as ``AliasRouter`` does.

    Policies come from the registry database (``TrafficStore``), re-read by ``watch`` every
    ``refresh_seconds``: a changed policy's arms are loaded (here and on every worker) before
    it is switched in, so no request waits for a load. An explicit ``name@alias``,
    ``name:N`` or ``/versions/N`` bypasses the policy.
    """

    def __init__(self, repository: ModelRepository, store: TrafficStore | None, *,
                 refresh_seconds: float = 2.0, random: Callable[[], float] = _random.random) -> None:
        self.base = AliasRouter(repository)
        self.repository = repository
        self.store = store
        self.refresh_seconds = refresh_seconds
        self._random = random
        self._active: dict[str, _Active] = {}
        self._listeners: list[Callable[[TrafficPolicy | None, str], None]] = []

    def on_change(self, listener: Callable[[TrafficPolicy | None, str], None]) -> None:
        """Call ``listener(policy_or_None, model)`` after a model's policy was switched in or removed."""
        self._listeners.append(listener)

    def policy(self, model: str) -> TrafficPolicy | None:
        active = self._active.get(model)
        return None if active is None else active.policy

    def policies(self) -> dict[str, TrafficPolicy]:
        return {m: a.policy for m, a in list(self._active.items())}

    def reward_of(self, model: str) -> str | None:
        """Where a model's arms' rewards come from (``TrafficPolicy.reward``): ``output:NAME`` is counted
        from each prediction; feedback labels are added to the counters by the feedback API."""
        policy = self.policy(model)
        return None if policy is None else policy.reward

    def route(self, name: str, version: str | None, ctx: RequestContext) -> Route:
        active = self._active.get(name)  # a bare served name; name@alias and name:N are not keys here
        if active is None or version:
            return self.base.route(name, version, ctx)
        policy = active.policy
        key = ctx.route_key
        if key is None and policy.sticky is not None:
            header = policy.sticky_header
            if header is not None:
                key = ctx.headers.get(header) if ctx.headers is not None else None
            else:
                return Route(active.refs[active.primaries[0].name], active.primaries[0].name,
                             revision=policy.revision, key_field=policy.sticky_field)
        arm = choose(active.primaries, key, self._random(), policy.salt)
        shadows: tuple[tuple[str, ModelRef], ...] = ()
        if active.shadows:
            shadows = tuple((s.name, active.refs[s.name]) for s in active.shadows
                            if copied(s, key, self._random(), policy.salt))
        return Route(active.refs[arm.name], arm.name, shadows, policy.revision)

    def live_refs(self) -> list[ModelRef]:
        refs = self.base.live_refs()
        for active in list(self._active.values()):
            refs += [active.refs[a.name] for a in (*active.primaries, *active.shadows) if a.weight > 0]
        return refs

    # -- following the store -------------------------------------------------------------

    async def watch(self, stop: asyncio.Event) -> None:
        """Re-read the policies every ``refresh_seconds`` (2 s when 0) until ``stop`` is set. Never dies."""
        if self.store is not None:
            await every(self.refresh_seconds or 2.0, stop, self.refresh, "re-reading traffic policies", logger)

    async def refresh(self) -> None:
        """Switch in every changed policy of a served name (its arms loaded first); drop removed ones."""
        if self.store is None:
            return
        stored = await anyio.to_thread.run_sync(self.store.all)
        served = set(self.repository.names())
        for model, policy in stored.items():
            if model not in served and not self.repository.serve_all:
                continue
            current = self._active.get(model)
            if current is not None and current.policy.revision == policy.revision:
                continue
            try:
                await self.activate(policy)
            except Exception:
                logger.exception("traffic policy %s revision %d not switched in", model, policy.revision)
        for model in [m for m in self._active if m not in stored]:
            del self._active[model]
            logger.info("%s: traffic policy removed; the name routes as it was served", model)
            self._changed(None, model)

    async def activate(self, policy: TrafficPolicy) -> None:
        """Load every arm the policy can send traffic to, then switch it in."""
        active = _activate(policy)
        for arm in (*active.primaries, *active.shadows):
            if arm.weight > 0:
                model = await self.repository.get_async(active.refs[arm.name])  # follows the alias from now on
                await self.repository.ensure_loaded(model.name, model.version.version)
        previous = self._active.get(policy.model)
        self._active[policy.model] = active
        if previous is None or previous.policy.revision != policy.revision:
            weights = ", ".join(f"{a.name}={a.weight:g}" for a in active.primaries)
            logger.info("%s: traffic policy revision %d (%s, %s): %s%s", policy.model, policy.revision,
                        policy.kind, policy.state, weights,
                        "; shadow " + ", ".join(f"{a.name}={a.weight:g}" for a in active.shadows)
                        if active.shadows else "")
            self._changed(policy, policy.model)

    def _changed(self, policy: TrafficPolicy | None, model: str) -> None:
        for listener in self._listeners:
            try:
                listener(policy, model)
            except Exception:
                logger.exception("traffic-policy listener failed")
