"""The rollout controller: the loop that moves canaries and bandits along.

One ``RolloutController`` runs in each server that has rollouts; a lease in the
registry database (``rollout-controller``) lets only one of them act at a time. The
holder renews the lease every tick; the others tick too, find the lease taken and
do nothing, and one of them takes over within ``lease_seconds`` once the holder
stops renewing (a holder that stops cleanly releases it at once).

Each tick the holder reads every running policy and:

* a canary: sums the per-arm totals of the revisions of its current step, asks
  ``next_canary_step`` and applies the answer (advance, promote, roll back, pause);
* a bandit: every ``cadence_seconds`` turns the arms' rewards so far into new
  weights with ``bandit_weights``.

Everything it needs is in the database: the policy (its step and state), the
history (when the step started and which revisions it spans) and the per-arm
counters (per revision). A controller that starts on another replica after the
holder died therefore continues the same step with the same evidence. Every write
names the revision it was computed from (``expected_revision``), so a person's
change made meanwhile (``shipyard rollout pause``) wins, and the controller decides
again from it on its next tick. Writes are idempotent in effect: a tick that
repeats after a crash finds the state it left and decides the same.

The loop never dies: an error is logged and the next tick tries again.

The controller's ``clock`` and the times the store writes into the history must be
the same clock (both the wall clock in a server): a step's age is ``clock()`` minus
the history time of the change that entered the step.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from datetime import datetime
from typing import Any

import anyio.to_thread
import numpy as np

from shipyard.errors import ConfigError, PromotionRefused
from shipyard.registry import Registry
from shipyard.rollout import actions
from shipyard.rollout.arm_stats import ArmTotals
from shipyard.rollout.bandit import ArmRewards, BanditConfig, bandit_weights
from shipyard.rollout.canary import Decision, next_canary_step
from shipyard.rollout.policy import TrafficPolicy, canary_weights
from shipyard.rollout.store import PolicyChange, PolicyConflict, TrafficStore

__all__ = ["LEASE", "ACTOR", "Applied", "ReadTotals", "RolloutController", "bandit_config", "step_revisions"]

logger = logging.getLogger(__name__)

LEASE = "rollout-controller"
"""The lease only one controller of a database holds at a time."""
ACTOR = "rollout-controller"
"""Who the controller's policy changes and alias moves are recorded as."""
DEFAULT_CADENCE_SECONDS = 60.0
"""How often a bandit's weights are recomputed unless its settings say ``cadence_seconds``."""

ReadTotals = Callable[[str, int, "float | None"], dict[str, ArmTotals]]
"""``read_totals(model, revision, since)``: per-arm totals of one policy revision (``arm_stats.read_totals``)."""


@dataclass(frozen=True)
class Applied:
    """What one tick did to one policy (for logs and tests)."""

    model: str
    action: str
    """A canary's action (``hold``, ``advance``, ``promote``, ``rollback``, ``pause``), ``weights`` for a
    bandit's new weights, ``wait`` for a bandit between cadences, or ``conflict`` when a change made
    meanwhile won."""
    revision: int
    """The policy's revision after the tick."""
    reason: str = ""
    decision: Decision | None = None


@dataclass(frozen=True)
class _Run:
    """The current step's (or bandit's) stretch of history: when it started and which revisions it spans."""

    started_at: float
    revisions: tuple[int, ...]
    previous: tuple[int, ...] = ()
    """The revisions of the step before (a canary's baseline when this step leaves the stable arm nothing)."""


class RolloutController:
    """A ``Service`` that ticks every ``interval_seconds`` and acts while it holds the lease.

    Args:
        store: the traffic policies and leases.
        registry: moves the stable alias when a canary is promoted.
        read_totals: ``read_totals(model, revision, since)`` per-arm totals of one revision.
        holder: this process's name in the lease (host and process id, say); unique per process.
        interval_seconds: time between ticks.
        lease_seconds: how long a lease lasts unrenewed; a few intervals, so one slow tick keeps it.
        clock: epoch seconds; the same clock the store's history is stamped with.
        rng: the randomness of Thompson sampling.
    """

    name = "rollout controller"

    def __init__(
        self,
        store: TrafficStore,
        registry: Registry,
        read_totals: ReadTotals,
        *,
        holder: str,
        interval_seconds: float = 5.0,
        lease_seconds: float = 15.0,
        clock: Callable[[], float] = time.time,
        rng: np.random.Generator | None = None,
    ) -> None:
        if lease_seconds <= interval_seconds:
            raise ConfigError(f"rollout controller: lease_seconds ({lease_seconds}) must exceed "
                              f"interval_seconds ({interval_seconds}), or the lease lapses between ticks")
        self.store = store
        self.registry = registry
        self.read_totals = read_totals
        self.holder = holder
        self.interval_seconds = interval_seconds
        self.lease_seconds = lease_seconds
        self._clock = clock
        self._rng = rng if rng is not None else np.random.default_rng()
        self._stop: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self.leading = False
        """Whether the last tick held the lease."""

    # -- the service ------------------------------------------------------------------------

    async def start(self) -> None:
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(self._loop(self._stop), name=self.name)

    async def stop(self) -> None:
        """Finish the tick in progress, then release the lease so another replica takes over at once."""
        if self._stop is not None and self._task is not None:
            self._stop.set()
            await self._task
            self._stop = self._task = None
        if self.leading:
            try:
                await anyio.to_thread.run_sync(self.store.release, LEASE, self.holder)
            except Exception:
                logger.exception("releasing the rollout lease failed; another replica takes over when it expires")
            self.leading = False

    async def _loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await anyio.to_thread.run_sync(self.tick)
            except Exception:
                logger.exception("rollout controller tick failed; trying again in %.1fs", self.interval_seconds)
            with contextlib.suppress(TimeoutError):  # the interval passed without a stop
                await asyncio.wait_for(stop.wait(), self.interval_seconds)

    # -- one tick ---------------------------------------------------------------------------

    def tick(self) -> list[Applied]:
        """Take or renew the lease; if held, act on every running policy. Returns what was done."""
        held = self.store.acquire(LEASE, self.holder, self.lease_seconds)
        if held != self.leading:
            logger.info("rollout controller %s %s the lease", self.holder, "took" if held else "lost")
            self.leading = held
        if not held:
            return []
        applied = []
        for model, policy in sorted(self.store.all().items()):
            if policy.state != "running" or policy.kind == "split":
                continue
            try:
                if policy.kind == "canary":
                    applied.append(self._canary(policy))
                else:
                    applied.append(self._bandit(policy))
            except PolicyConflict as exc:
                logger.info("%s: changed meanwhile (revision %d); deciding again next tick", model, exc.found)
                applied.append(Applied(model, "conflict", exc.found, str(exc)))
            except ConfigError as exc:
                # settings no tick can act on: hand them to a person rather than log the same error forever
                try:
                    stored = self._put(replace(policy, state="paused"), f"paused: {exc}", policy.revision)
                    applied.append(Applied(model, "pause", stored.revision, stored.reason))
                except PolicyConflict:
                    pass  # changed meanwhile: the next tick reads the change
            except Exception:
                # one broken policy must not stop the others
                logger.exception("%s: rollout step failed; trying again next tick", model)
        return applied

    def _totals(self, model: str, revisions: Sequence[int]) -> dict[str, ArmTotals]:
        """Per-arm totals summed over revisions (each revision's counters hold only its own requests).

        No ``since``: a revision's counters are all of the step already, and a time filter would
        drop the window the step started in (windows are whole minutes).
        """
        out: dict[str, ArmTotals] = {}
        for revision in revisions:
            for arm, totals in self.read_totals(model, revision, None).items():
                out[arm] = out[arm] + totals if arm in out else totals
        return out

    def _canary(self, policy: TrafficPolicy) -> Applied:
        plan = policy.canary
        assert plan is not None
        run = step_revisions(self.store.history(policy.model), policy)
        totals = self._totals(policy.model, run.revisions)
        baseline = None
        if canary_weights(policy)[plan.stable] <= 0 and run.previous:
            baseline = self._totals(policy.model, run.previous).get(plan.stable)
        decision = next_canary_step(policy, totals, run.started_at, self._clock(), baseline=baseline)
        if decision.action == "hold":
            if decision.note and policy.reason != decision.note:
                # past max_step_seconds: say so once in the policy, for `shipyard rollout status`
                stored = self._put(policy, decision.note, policy.revision)
                return Applied(policy.model, "hold", stored.revision, decision.reason, decision)
            return Applied(policy.model, "hold", policy.revision, decision.reason, decision)
        if decision.action == "advance":
            stored = self._put(replace(policy, step=policy.step + 1), decision.reason, policy.revision)
        elif decision.action == "promote":
            stored = self._promote(policy, decision.reason)
        elif decision.action == "rollback":
            stored = self._put(replace(policy, state="rolled_back"), decision.reason, policy.revision)
        else:
            stored = self._put(replace(policy, state="paused"), decision.reason, policy.revision)
        logger.info("%s: canary %s (revision %d): %s", policy.model, decision.action, stored.revision,
                    decision.reason)
        return Applied(policy.model, decision.action, stored.revision, decision.reason, decision)

    def _promote(self, policy: TrafficPolicy, reason: str) -> TrafficPolicy:
        """Promote the candidate (``actions.promote_policy``: gates, then the alias, then the state).

        A failed promotion gate pauses the rollout with the gates' reasons, for a person to
        decide (``shipyard rollout promote --force`` or ``abort``).
        """
        plan = policy.canary
        assert plan is not None
        try:
            stored, _ = actions.promote_policy(self.store, self.registry, policy, plan.candidate, actor=ACTOR,
                                               reason=reason)
        except PromotionRefused as exc:
            return self._put(replace(policy, state="paused"), str(exc), policy.revision)
        return stored

    def _bandit(self, policy: TrafficPolicy) -> Applied:
        config, cadence = bandit_config(policy.bandit or {})
        history = self.store.history(policy.model)
        now = self._clock()
        last_change = _epoch(history[-1].at) if history else now
        if now - last_change < cadence:
            return Applied(policy.model, "wait", policy.revision)
        run = bandit_revisions(history, policy)
        totals = self._totals(policy.model, run.revisions)
        arms = [a.name for a in policy.primaries]
        rewards = [ArmRewards(a, totals[a].reward_n, totals[a].reward_sum, totals[a].reward_sumsq)
                   if a in totals else ArmRewards(a, 0, 0.0, 0.0) for a in arms]
        weights = bandit_weights(config, rewards, self._rng)
        summary = ", ".join(f"{r.arm}={weights[r.arm]:.3f} ({r.n} rewards, mean "
                            f"{'n/a' if r.mean is None else f'{r.mean:.4g}'})" for r in rewards)
        stored = self._put(policy.with_weights(weights), f"bandit weights: {summary}", policy.revision)
        return Applied(policy.model, "weights", stored.revision, stored.reason)

    def _put(self, policy: TrafficPolicy, reason: str, expected: int) -> TrafficPolicy:
        return self.store.put(policy, actor=ACTOR, reason=reason, expected_revision=expected)


# -- reading the history --------------------------------------------------------------------


def _epoch(at: str) -> float:
    return datetime.fromisoformat(at).timestamp()


def _same_step(a: TrafficPolicy, b: TrafficPolicy) -> bool:
    """Whether two revisions route the same canary step (same arms and shares, running or paused)."""
    return (a.kind == b.kind == "canary" and a.state in ("running", "paused") and a.step == b.step
            and canary_weights(a) == canary_weights(b)
            and [(x.name, x.target) for x in a.arms] == [(x.name, x.target) for x in b.arms])


def _newest_run(history: Sequence[PolicyChange], same: Callable[[TrafficPolicy], bool]) -> int:
    """Index of the first entry of the newest unbroken stretch of entries for which ``same`` holds."""
    start = len(history)
    while start > 0 and same(history[start - 1].policy) and history[start - 1].state != "removed":
        start -= 1
    return start


def step_revisions(history: Sequence[PolicyChange], policy: TrafficPolicy) -> _Run:
    """When the canary's current step started and which revisions it spans, from the policy's history.

    The step is the newest unbroken stretch of history entries routing the same step the
    same way: a pause and a resume stay in it (the weights did not change), a move to
    another step, a rollback or a removal ends it. A step's requests are counted under
    the revisions that routed them, so its totals are the sum over these revisions.
    """
    start = _newest_run(history, lambda p: _same_step(p, policy))
    if start == len(history):
        # not in the history (a hand-made row): the policy's own revision, starting now-ish
        return _Run(_epoch(history[-1].at) if history else 0.0, (policy.revision,))
    run = history[start:]
    previous: tuple[int, ...] = ()
    if start > 0 and policy.step > 0:
        before = history[start - 1].policy
        if before.step == policy.step - 1:
            first = _newest_run(history[:start], lambda p: _same_step(p, before))
            previous = tuple(e.revision for e in history[first:start])
    return _Run(_epoch(run[0].at), tuple(e.revision for e in run), previous)


def bandit_revisions(history: Sequence[PolicyChange], policy: TrafficPolicy) -> _Run:
    """The revisions of the bandit experiment now running: rewards are pooled over all of them.

    It starts where the policy became a bandit over these arms (or was restarted after a
    rollback); weight changes, pauses and resumes stay in it.
    """
    arms = [(a.name, a.target) for a in policy.primaries]
    start = _newest_run(history, lambda p: p.kind == "bandit" and p.state in ("running", "paused")
                        and [(a.name, a.target) for a in p.primaries] == arms)
    if start == len(history):
        return _Run(0.0, (policy.revision,))
    return _Run(_epoch(history[start].at), tuple(e.revision for e in history[start:]))


def bandit_config(settings: Mapping[str, Any]) -> tuple[BanditConfig, float]:
    """The ``BanditConfig`` and the cadence (seconds) of a policy's ``bandit`` settings."""
    known = {f.name for f in fields(BanditConfig)}
    unknown = sorted(set(settings) - known - {"cadence_seconds"})
    if unknown:
        raise ConfigError(f"bandit: unknown settings {unknown} (known: {', '.join(sorted(known))}, cadence_seconds)")
    values = {k: v for k, v in settings.items() if k in known}
    if "prior" in values:
        values["prior"] = tuple(float(x) for x in values["prior"])
    cadence = float(settings.get("cadence_seconds", DEFAULT_CADENCE_SECONDS))
    if not cadence > 0:
        raise ConfigError(f"bandit: cadence_seconds must be positive, got {cadence}")
    return BanditConfig(**values), cadence
