"""What a person (``shipyard rollout``) or the controller does to a rollout: start, pause, resume, promote, abort.

Each action is a change of the stored policy (``TrafficStore.put``), so every replica
sees it within ``alias_refresh_seconds``; promotion also moves an alias through the
registry, whose history keeps the move (``shipyard rollback`` undoes it). Changes
are made against the revision they read: a concurrent change fails them with
``PolicyConflict`` rather than being silently overwritten.
"""

from __future__ import annotations

from dataclasses import replace

from shipyard.errors import ConfigError, ModelNotFound
from shipyard.registry import Registry
from shipyard.registry.model import AliasMove
from shipyard.rollout.policy import State, TrafficPolicy
from shipyard.rollout.store import TrafficStore
from shipyard.types import is_version_number


class NoPolicy(ModelNotFound):
    """The model has no traffic policy."""

    def __init__(self, model: str) -> None:
        super().__init__(model)
        self.message = f"{model} has no traffic policy (start one with `shipyard rollout start {model}`)"


def start(store: TrafficStore, registry: Registry, policy: TrafficPolicy, *, actor: str | None = None,
          reason: str = "started") -> TrafficPolicy:
    """Store a new policy, running from its first step; every arm must resolve in the registry now."""
    for arm in policy.arms:
        registry.resolve(arm.ref(policy.model))  # ModelNotFound naming the alias or version
    return store.put(replace(policy, state="running", step=0), actor=actor, reason=reason)


def current(store: TrafficStore, model: str) -> TrafficPolicy:
    policy = store.get(model)
    if policy is None:
        raise NoPolicy(model)
    return policy


def set_state(store: TrafficStore, model: str, state: State, *, actor: str | None = None,
              reason: str = "") -> TrafficPolicy:
    """Pause, resume or abort (traffic back on the stable arm); refused from a finished state."""
    policy = current(store, model)
    if policy.state in ("promoted", "aborted", "rolled_back") and state != policy.state:
        raise ConfigError(f"{model}'s rollout is {policy.state}; start a new one instead")
    return store.put(replace(policy, state=state), actor=actor, reason=reason or state,
                     expected_revision=policy.revision)


def promote(store: TrafficStore, registry: Registry, model: str, arm: str | None = None, *,
            actor: str | None = None, reason: str = "") -> tuple[TrafficPolicy, AliasMove]:
    """Move the stable arm's alias to ``arm``'s version (a canary's candidate by default); state promoted.

    The stable arm is the canary's, else the first primary arm; it must name an alias.
    """
    policy = current(store, model)
    if policy.state in ("promoted", "aborted", "rolled_back"):
        raise ConfigError(f"{model}'s rollout is {policy.state} already")
    stable = policy.arm(policy.canary.stable if policy.canary else policy.primaries[0].name)
    winner = policy.arm(arm or (policy.canary.candidate if policy.canary else _only_other(policy, stable.name)))
    if winner.name == stable.name:
        raise ConfigError(f"{winner.name} is the stable arm already; name the arm to promote")
    if is_version_number(stable.target):
        raise ConfigError(f"the stable arm {stable.name} is the fixed version {stable.target}: there is no "
                          "alias to move")
    version = registry.resolve(winner.ref(model))
    move = registry.set_alias(model, stable.target, version, actor=actor)
    stored = store.put(replace(policy, state="promoted"), actor=actor,
                       reason=reason or f"promoted {winner.name} (version {version}) to {stable.target}",
                       expected_revision=policy.revision)
    return stored, move


def _only_other(policy: TrafficPolicy, stable: str) -> str:
    others = [a.name for a in policy.primaries if a.name != stable]
    if len(others) != 1:
        raise ConfigError(f"{policy.model} has several candidate arms ({', '.join(others)}); name the one "
                          "to promote")
    return others[0]
