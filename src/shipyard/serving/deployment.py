"""What each served model gets from the settings: batch policy, response cache, runtime mode.

Pure: settings in, plain policies out. ``build_server`` hands them to ``DataPlane`` and
``ModelRepository``. A model's ``models:`` entry (shipyard.yaml) wins over the server-wide
``batching``/``batch_*``, ``cache_*`` and ``runtime`` settings; a key it leaves out takes the
server-wide value.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from shipyard.batching.policy import BatchPolicy
from shipyard.config import Settings
from shipyard.rollout.policy import TrafficPolicy
from shipyard.serving.cache import CachePolicy
from shipyard.types import ModelRef

__all__ = ["DeploymentPolicies", "batch_policy", "deployment_policies", "traffic_policies"]


@dataclass(frozen=True)
class DeploymentPolicies:
    """Per-model policies of one server."""

    default_batching: BatchPolicy | None
    """The batch policy of models without a ``batching:`` entry (None: they are not batched)."""

    batching: dict[str, BatchPolicy | None]
    """Model name -> its own batch policy (None: not batched)."""

    cache: CachePolicy | None
    """The shared response cache: ``cache_size`` entries, plus the size of each model that gives its own
    (None: no cache)."""

    cached_models: set[str]
    """Models whose responses are cached."""

    runtimes: dict[str, str]
    """Model name -> runtime mode, for models whose mode differs from ``Settings.runtime``."""


def batch_policy(settings: Settings, name: str | None = None) -> BatchPolicy | None:
    """The batch policy of model ``name`` (None: the server-wide one), or None when it is not batched."""
    deployment = settings.deployment(name) if name is not None else None
    own = deployment.batching if deployment is not None else None
    if own is None:
        if not settings.batching:
            return None
        return BatchPolicy(
            max_batch_size=settings.batch_max_size,
            max_wait_ms=settings.batch_max_wait_ms,
            latency_target_ms=settings.batch_latency_target_ms or None,
        )
    if not own.enabled:
        return None
    target = settings.batch_latency_target_ms if own.latency_target_ms is None else own.latency_target_ms
    return BatchPolicy(
        max_batch_size=settings.batch_max_size if own.max_size is None else own.max_size,
        max_wait_ms=settings.batch_max_wait_ms if own.max_wait_ms is None else own.max_wait_ms,
        latency_target_ms=target or None,
    )


def deployment_policies(settings: Settings, served: Iterable[str]) -> DeploymentPolicies:
    """The policies of the models ``served`` (references) and those of ``settings.models``."""
    names = dict.fromkeys([*(ModelRef.parse(ref).name for ref in served), *(m.name for m in settings.models)])
    batching = {m.name: batch_policy(settings, m.name) for m in settings.models if m.batching is not None}
    cached = {name: settings.cache_for(name) for name in names}
    cached = {name: entry for name, entry in cached.items() if entry[0] > 0}
    cache = None
    if cached:
        # models without a size of their own share ``cache_size`` entries; one with a size adds its own
        own = {m.name for m in settings.models if m.cache is not None and m.cache.size is not None}
        shared = settings.cache_size if any(name not in own for name in cached) else 0
        entries = shared + sum(size for name, (size, _) in cached.items() if name in own)
        # Settings refuses cached models whose lifetimes differ, so any one of them tells the lifetime
        cache = CachePolicy(max_entries=entries, ttl_seconds=next(iter(cached.values()))[1])
    runtimes = {m.name: m.runtime for m in settings.models if m.runtime is not None and m.runtime != settings.runtime}
    return DeploymentPolicies(batch_policy(settings), batching, cache, set(cached), runtimes)


def traffic_policies(settings: Settings) -> list[TrafficPolicy]:
    """The traffic policies ``shipyard.yaml`` declares (``models[].traffic``)."""
    return [p for p in (m.traffic_policy() for m in settings.models) if p is not None]
