"""What a person (``shipyard rollout``) or the controller does to a rollout: start, pause, resume, promote, abort.

Each action is a change of the stored policy (``TrafficStore.put``), so every replica
sees it within ``alias_refresh_seconds``; promotion also moves an alias through the
registry, whose history keeps the move (``shipyard rollback`` undoes it). Changes
are made against the revision they read: a concurrent change fails them with
``PolicyConflict`` rather than being silently overwritten.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from shipyard.errors import ConfigError, ModelNotFound, PromotionRefused
from shipyard.registry import Registry
from shipyard.registry.model import AliasMove
from shipyard.rollout.policy import Arm, State, TrafficPolicy
from shipyard.rollout.store import PolicyConflict, TrafficStore
from shipyard.security import audit
from shipyard.types import is_version_number

if TYPE_CHECKING:
    from shipyard.registry.database import Database
    from shipyard.rollout.gates import GateReport


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
            actor: str | None = None, reason: str = "", force: bool = False) -> tuple[TrafficPolicy, AliasMove | None]:
    """Move the stable arm's alias to ``arm``'s version (a canary's candidate by default); state promoted.

    The stable arm is the canary's, else the first primary arm; it must name an alias.
    """
    policy = current(store, model)
    if policy.state in ("promoted", "aborted", "rolled_back"):
        raise ConfigError(f"{model}'s rollout is {policy.state} already")
    winner = arm or (policy.canary.candidate if policy.canary else _only_other(policy, _stable(policy).name))
    return promote_policy(store, registry, policy, winner, actor=actor, reason=reason, force=force)


def promote_policy(store: TrafficStore, registry: Registry, policy: TrafficPolicy, winner: str, *,
                   actor: str | None, reason: str = "", force: bool = False,
                   ) -> tuple[TrafficPolicy, AliasMove | None]:
    """Promote ``winner`` of ``policy`` as read at its revision: gates, alias move, then the promoted state.

    The promotion gates (``rollout/gates.py``) run first; a failure raises PromotionRefused
    unless ``force`` (the outcome is logged either way). The alias moves before the state
    is written, so a promoted policy (all traffic on the stable arm) always serves the winner;
    a repeat after a crash finds the alias there already and does not move it again, and a
    change made meanwhile (the write's PolicyConflict) moves it back.
    """
    from shipyard.rollout.gates import log_outcome, promotion_gates  # loads models: only when promoting

    stable = _stable(policy)
    chosen = policy.arm(winner)
    if chosen.name == stable.name:
        raise ConfigError(f"{chosen.name} is the stable arm already; name the arm to promote")
    if is_version_number(stable.target):
        raise ConfigError(f"the stable arm {stable.name} is the fixed version {stable.target}: there is no "
                          "alias to move")
    alias = stable.target
    version = registry.resolve(chosen.ref(policy.model))
    report = promotion_gates(registry, policy.model, alias, version)
    log_outcome(report, actor=actor, forced=force)
    if not report.passed and not force:
        record_refusal(store.database, report)
        raise PromotionRefused(f"{policy.model}@{alias}", version, report.reasons())
    latest = store.get(policy.model)
    if latest is None or latest.revision != policy.revision:
        # changed since it was read (a pause, say): no alias moves on a stale decision
        raise PolicyConflict(policy.model, policy.revision, 0 if latest is None else latest.revision)
    before = registry.aliases(policy.model).get(alias)
    move = (registry.set_alias(policy.model, alias, version, actor=actor, note=report.note(forced=force))
            if before != version else None)
    note = reason or f"promoted {chosen.name}"
    try:
        stored = store.put(replace(policy, state="promoted"), actor=actor,
                           reason=f"{note}: {alias} moved from version {before} to {version}"
                           + (" (gates failed, forced)" if not report.passed else ""),
                           expected_revision=policy.revision)
    except PolicyConflict:
        if move is not None and before is not None:
            registry.set_alias(policy.model, alias, before, actor=actor, note="promotion undone: the rollout changed")
        raise
    return stored, move


def record_refusal(database: Database, report: GateReport) -> None:
    """Audit a promotion the gates refused: ``alias.set``, outcome ``refused``, with the gates' verdicts."""
    audit.record(database, "alias.set", f"{report.name}@{report.alias}", outcome="refused",
                 details={"previous": report.current, "version": report.candidate, "note": report.note(forced=False),
                          "gates": [r.to_dict() for r in report.results]})


def _stable(policy: TrafficPolicy) -> Arm:
    return policy.arm(policy.canary.stable if policy.canary else policy.primaries[0].name)


def _only_other(policy: TrafficPolicy, stable: str) -> str:
    others = [a.name for a in policy.primaries if a.name != stable]
    if len(others) != 1:
        raise ConfigError(f"{policy.model} has several candidate arms ({', '.join(others)}); name the one "
                          "to promote")
    return others[0]
