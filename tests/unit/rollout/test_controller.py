"""The rollout controller on a real SQLite registry, with a simulated clock and simulated traffic.

``Fleet`` stands in for the routers and the per-arm counters of a fleet of replicas: each
simulated minute it splits requests over the arms by the stored policy's current weights
(multinomial draws) and counts them under the policy's revision, with binomial errors and
rewards and log-normal latencies in the ``LATENCY_BOUNDS`` buckets. The controller reads
those counts through its injected ``read_totals``. Nothing sleeps: the clock is a number
the test moves, and ``tick()`` is called directly.

The store stamps history entries with its own clock, the simulated one here, so a step's
start read from the history and the controller's ``now`` are on the same clock, as they
are in production.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy import stats
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

from shipyard.config import Settings
from shipyard.registry import Registry
from shipyard.rollout.arm_stats import LATENCY_BOUNDS, ArmTotals
from shipyard.rollout.controller import LEASE, RolloutController, step_revisions
from shipyard.rollout.policy import TrafficPolicy, canary_weights
from shipyard.rollout.store import TrafficStore

MODEL = "iris"
STEPS = (0.01, 0.05, 0.2, 0.5, 1.0)
TICK = 60.0  # seconds of simulated traffic between two ticks
PER_TICK = 12_000  # requests per simulated minute (200 per second)


class Clock:
    """Simulated epoch seconds."""

    def __init__(self, start: float = 1_900_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    return clock


def register_two_versions(registry: Registry) -> None:
    """iris:1 as champion, iris:2 as challenger: two tiny, different models."""
    X, y = load_iris(return_X_y=True, as_frame=True)
    for c, alias in ((1.0, "champion"), (0.5, "challenger")):
        registry.register(LogisticRegression(C=c, max_iter=500).fit(X, y), MODEL, sample=X.head(3), alias=alias)


@pytest.fixture(scope="module")
def registered_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A registry home with the two versions, made once: registering takes seconds, copying it does not."""
    home = tmp_path_factory.mktemp("rollout") / "home"
    reg = Registry.from_settings(Settings(home=home))
    try:
        register_two_versions(reg)
    finally:
        reg.close()
    return home


@pytest.fixture
def registry(settings: Settings, registered_home: Path) -> Iterator[Registry]:
    shutil.copytree(registered_home, settings.home)
    reg = Registry.from_settings(settings)
    try:
        yield reg
    finally:
        reg.close()


@dataclass(frozen=True)
class Behaviour:
    """How one arm's version behaves."""

    error_rate: float = 0.005
    median_latency: float = 0.040
    reward_rate: float | None = None


class Fleet:
    """Routers and per-arm counters: requests split by the stored policy, counted per revision."""

    def __init__(self, store: TrafficStore, behaviour: dict[str, Behaviour], seed: int) -> None:
        self.store = store
        self.behaviour = behaviour
        self.rng = np.random.default_rng(seed)
        self.counts: dict[tuple[str, int], dict[str, ArmTotals]] = {}
        self.reads = 0

    def read_totals(self, model: str, revision: int, since: float | None) -> dict[str, ArmTotals]:
        self.reads += 1
        return dict(self.counts.get((model, revision), {}))

    def serve(self, requests: int = PER_TICK) -> None:
        policy = self.store.get(MODEL)
        assert policy is not None
        weights = canary_weights(policy) if policy.kind == "canary" else {a.name: a.weight for a in policy.primaries}
        names = list(weights)
        shares = np.array([weights[n] for n in names])
        counts = self.rng.multinomial(requests, shares / shares.sum())
        kept = self.counts.setdefault((MODEL, policy.revision), {})
        for name, n in zip(names, counts, strict=True):
            if n:
                added = self._requests(name, int(n))
                kept[name] = kept[name] + added if name in kept else added

    def _requests(self, arm: str, n: int) -> ArmTotals:
        b = self.behaviour[arm]
        cdf = stats.lognorm(0.5, scale=b.median_latency).cdf(np.asarray(LATENCY_BOUNDS))
        buckets = self.rng.multinomial(n, np.diff(np.concatenate(([0.0], cdf))))
        rewards = 0 if b.reward_rate is None else int(self.rng.binomial(n, b.reward_rate))
        return ArmTotals(arm, requests=n, errors=int(self.rng.binomial(n, b.error_rate)),
                         latency_buckets=tuple(int(x) for x in buckets), reward_n=0 if b.reward_rate is None else n,
                         reward_sum=rewards, reward_sumsq=rewards)


def canary_policy(**gates: Any) -> TrafficPolicy:
    return TrafficPolicy.from_dict({
        "model": MODEL,
        "arms": [{"alias": "champion"}, {"alias": "challenger", "weight": 0}],
        "canary": {"stable": "champion", "candidate": "challenger", "steps": list(STEPS), "interval_seconds": 300,
                   "gates": gates},
    })


def controller(registry: Registry, fleet: Fleet, clock: Clock, holder: str = "replica-a",
               read_totals: Callable[[str, int, float | None], dict[str, ArmTotals]] | None = None,
               ) -> RolloutController:
    store = TrafficStore(registry.database, clock=clock)
    return RolloutController(store, registry, read_totals or fleet.read_totals, holder=holder, clock=clock,
                             rng=np.random.default_rng(0))


def run(fleet: Fleet, clock: Clock, controllers: list[RolloutController], ticks: int,
        until: Callable[[TrafficPolicy], bool] = lambda p: p.state != "running") -> list[Any]:
    """Serve a minute of traffic, tick every controller, until ``until(policy)`` or ``ticks`` minutes."""
    applied: list[Any] = []
    for _ in range(ticks):
        fleet.serve()
        clock.now += TICK
        for c in controllers:
            applied += [(c.holder, a) for a in c.tick()]
        policy = fleet.store.get(MODEL)
        assert policy is not None
        if until(policy):
            break
    return applied


# -- canaries end to end -----------------------------------------------------------------------


def test_a_candidate_with_ten_times_the_errors_rolls_back_by_itself_and_the_alias_never_moves(
        registry: Registry, clock: Clock) -> None:
    store = TrafficStore(registry.database, clock=clock)
    store.put(canary_policy(), actor="alice", reason="canary of v2")
    fleet = Fleet(store, {"champion": Behaviour(0.005), "challenger": Behaviour(0.05)}, seed=1)
    moves_before = registry.alias_history(MODEL)
    run(fleet, clock, [controller(registry, fleet, clock)], ticks=60)

    policy = store.get(MODEL)
    assert policy is not None and policy.state == "rolled_back"
    assert "error_rate fail" in policy.reason
    assert policy.step == 0  # it never left the 1 % step
    assert registry.aliases(MODEL) == {"champion": 1, "challenger": 2}
    assert registry.alias_history(MODEL) == moves_before
    assert canary_weights(policy)["challenger"] == 0.0
    last = store.history(MODEL)[-1]
    assert (last.actor, last.state) == ("rollout-controller", "rolled_back")


def test_a_good_candidate_is_promoted_through_every_step_and_the_alias_moves_once(
        registry: Registry, clock: Clock) -> None:
    store = TrafficStore(registry.database, clock=clock)
    store.put(canary_policy(), actor="alice")
    fleet = Fleet(store, {"champion": Behaviour(), "challenger": Behaviour()}, seed=2)
    moves_before = len(registry.alias_history(MODEL, "champion"))
    applied = run(fleet, clock, [controller(registry, fleet, clock)], ticks=120)

    policy = store.get(MODEL)
    assert policy is not None and policy.state == "promoted", policy.reason
    moves = registry.alias_history(MODEL, "champion")[moves_before:]
    assert [(m.version, m.previous, m.actor) for m in moves] == [(2, 1, "rollout-controller")]
    assert registry.resolve(f"{MODEL}@champion") == 2
    history = store.history(MODEL)
    assert [(h.policy.step, h.state) for h in history] == [
        (0, "running"), (1, "running"), (2, "running"), (3, "running"), (4, "running"), (4, "promoted")]
    assert [h.actor for h in history[1:]] == ["rollout-controller"] * 5
    # each step lasted at least its interval, on the simulated clock
    starts = [datetime.fromisoformat(h.at).timestamp() for h in history]
    assert all(b - a >= 300 for a, b in zip(starts, starts[1:], strict=False))
    decisions = [a for _, a in applied if a.action in ("advance", "promote")]
    assert [a.action for a in decisions] == ["advance"] * 4 + ["promote"]
    # the last step (all traffic on the candidate) was judged against the stable arm of the step before
    gates = {g.gate: g for g in decisions[-1].decision.gates}
    assert gates["units"].values["stable"] > 0 and gates["split"].verdict == "skipped"


def test_only_the_lease_holder_acts_and_a_replica_resumes_the_same_step_when_the_holder_dies(
        settings: Settings, registry: Registry, clock: Clock) -> None:
    two_controllers_share_one_rollout(registry, Registry.from_settings(settings), clock)


def two_controllers_share_one_rollout(registry_a: Registry, registry_b: Registry, clock: Clock) -> None:
    """Two replicas (their own connections to one database): one acts, the other takes over after it dies."""
    store = TrafficStore(registry_a.database, clock=clock)
    store.put(canary_policy(), actor="alice")
    fleet = Fleet(store, {"champion": Behaviour(), "challenger": Behaviour()}, seed=3)
    a = controller(registry_a, fleet, clock, holder="replica-a")
    b = controller(registry_b, fleet, clock, holder="replica-b")
    try:
        applied = run(fleet, clock, [a, b], ticks=120, until=lambda p: p.step == 2)
        assert applied and {holder for holder, _ in applied} == {"replica-a"}
        assert a.leading and not b.leading
        assert store.holder(LEASE) == ("replica-a", pytest.approx(clock() + a.lease_seconds))

        # replica a dies right after moving to step 3: no release, its lease runs out
        started = step_revisions(store.history(MODEL), store.get(MODEL)).started_at  # type: ignore[arg-type]
        clock.now += 5
        assert b.tick() == []
        clock.now += a.lease_seconds
        taken = b.tick()
        assert b.leading and [x.action for x in taken] == ["hold"]
        assert store.get(MODEL).step == 2  # type: ignore[union-attr]
        # b reads the step's start from the history: it waits out the interval a started
        assert "interval waiting" in taken[0].reason
        assert step_revisions(store.history(MODEL), store.get(MODEL)).started_at == started  # type: ignore[arg-type]

        applied = run(fleet, clock, [b], ticks=120)
        policy = store.get(MODEL)
        assert policy is not None and policy.state == "promoted"
        assert [h.policy.step for h in store.history(MODEL)] == [0, 1, 2, 3, 4, 4]
        assert registry_a.resolve(f"{MODEL}@champion") == 2
        assert a.tick() == []  # the old holder, back, finds the lease taken
    finally:
        registry_b.close()


@pytest.mark.anyio
async def test_a_holder_that_stops_releases_the_lease_and_another_takes_over_at_once(
        settings: Settings, registry: Registry, clock: Clock) -> None:
    other = Registry.from_settings(settings)
    try:
        store = TrafficStore(registry.database, clock=clock)
        store.put(canary_policy(), actor="alice")
        fleet = Fleet(store, {"champion": Behaviour(), "challenger": Behaviour()}, seed=4)
        a = controller(registry, fleet, clock, holder="replica-a")
        b = controller(other, fleet, clock, holder="replica-b")
        fleet.serve()
        assert [x.action for x in a.tick()] == ["hold"] and b.tick() == []
        await a.stop()
        assert store.holder(LEASE) is None and not a.leading
        assert [x.action for x in b.tick()] == ["hold"]  # same clock: no waiting for an expiry
    finally:
        other.close()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# -- people and the controller -------------------------------------------------------------------


def test_a_pause_made_while_a_tick_decides_wins_over_the_tick(registry: Registry, clock: Clock) -> None:
    store = TrafficStore(registry.database, clock=clock)
    store.put(canary_policy(), actor="alice")
    fleet = Fleet(store, {"champion": Behaviour(), "challenger": Behaviour()}, seed=5)
    for _ in range(30):
        fleet.serve()
    clock.now += 3600  # enough traffic and time: this tick would advance

    def pause_meanwhile(model: str, revision: int, since: float | None) -> dict[str, ArmTotals]:
        current = store.get(model)
        assert current is not None
        if current.state == "running":  # a person pauses between the controller's read and its write
            store.put(replace(current, state="paused"), actor="alice", reason="looking at a dashboard")
        return fleet.read_totals(model, revision, since)

    c = controller(registry, fleet, clock, read_totals=pause_meanwhile)
    assert [x.action for x in c.tick()] == ["conflict"]
    policy = store.get(MODEL)
    assert policy is not None and (policy.state, policy.step, policy.reason) == ("paused", 0, "looking at a dashboard")
    assert store.history(MODEL)[-1].actor == "alice"
    assert c.tick() == []  # paused: the controller leaves it alone

    # resumed by a person: the step keeps its start and its evidence, and advances
    store.put(replace(policy, state="running"), actor="alice", reason="resumed")
    plain = controller(registry, fleet, clock, holder="replica-a")
    assert [x.action for x in plain.tick()] == ["advance"]
    run_ = step_revisions(store.history(MODEL)[:-1], store.history(MODEL)[-2].policy)
    assert run_.revisions == (1, 2, 3)


def test_a_promotion_decided_before_a_pause_never_moves_the_alias(registry: Registry, clock: Clock) -> None:
    store = TrafficStore(registry.database, clock=clock)
    store.put(replace(canary_policy(), step=3), actor="alice")  # its stable arm is the last step's baseline
    fleet = Fleet(store, {"champion": Behaviour(), "challenger": Behaviour()}, seed=6)
    for _ in range(10):
        fleet.serve()
    store.put(replace(canary_policy(), step=4), actor="alice")
    for _ in range(10):
        fleet.serve()
    clock.now += 3600
    moves = registry.alias_history(MODEL)
    paused = False

    def pause_meanwhile(model: str, revision: int, since: float | None) -> dict[str, ArmTotals]:
        nonlocal paused
        current = store.get(model)
        if not paused and current is not None:
            paused = True
            store.put(replace(current, state="paused"), actor="alice")
        return fleet.read_totals(model, revision, since)

    c = controller(registry, fleet, clock, read_totals=pause_meanwhile)
    assert [x.action for x in c.tick()] == ["conflict"]
    assert registry.alias_history(MODEL) == moves and registry.resolve(f"{MODEL}@champion") == 1
    # the same tick without the pause promotes
    store.put(replace(store.get(MODEL), state="running"), actor="alice")  # type: ignore[type-var]
    assert [x.action for x in c.tick()] == ["promote"]
    assert registry.resolve(f"{MODEL}@champion") == 2


def test_gate_settings_no_tick_can_read_pause_the_canary_with_the_reason(registry: Registry, clock: Clock) -> None:
    store = TrafficStore(registry.database, clock=clock)
    store.put(canary_policy(max_error_rate=0.02), actor="alice")
    fleet = Fleet(store, {"champion": Behaviour(), "challenger": Behaviour()}, seed=7)
    fleet.serve()
    assert [x.action for x in controller(registry, fleet, clock).tick()] == ["pause"]
    policy = store.get(MODEL)
    assert policy is not None and policy.state == "paused" and "max_error_rate" in policy.reason


def test_one_failing_policy_is_logged_and_the_others_still_move(
        registry: Registry, clock: Clock, caplog: pytest.LogCaptureFixture) -> None:
    store = TrafficStore(registry.database, clock=clock)
    store.put(canary_policy(), actor="alice")
    store.put(TrafficPolicy.from_dict({**canary_policy().to_dict(), "model": "other"}), actor="alice")
    fleet = Fleet(store, {"champion": Behaviour(), "challenger": Behaviour()}, seed=8)
    fleet.serve()

    def broken_for_other(model: str, revision: int, since: float | None) -> dict[str, ArmTotals]:
        if model == "other":
            raise RuntimeError("counters unavailable")
        return fleet.read_totals(model, revision, since)

    with caplog.at_level(logging.ERROR, logger="shipyard.rollout.controller"):
        applied = controller(registry, fleet, clock, read_totals=broken_for_other).tick()
    assert [(x.model, x.action) for x in applied] == [(MODEL, "hold")]
    assert "other: rollout step failed" in caplog.text and "counters unavailable" in caplog.text


class FlakyStore(TrafficStore):
    """A store whose first lease request fails, as a database restarting would."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.calls = 0
        self.second = threading.Event()

    def acquire(self, name: str, holder: str, ttl_seconds: float) -> bool:
        self.calls += 1
        if self.calls == 1:
            raise ConnectionError("database restarting")
        self.second.set()
        return super().acquire(name, holder, ttl_seconds)


@pytest.mark.anyio
async def test_the_loop_survives_a_failing_tick_and_releases_the_lease_on_stop(
        registry: Registry, caplog: pytest.LogCaptureFixture) -> None:
    store = FlakyStore(registry.database)
    c = RolloutController(store, registry, lambda m, r, s: {}, holder="replica-a", interval_seconds=0.01,
                          lease_seconds=5.0)
    with caplog.at_level(logging.ERROR, logger="shipyard.rollout.controller"):
        await c.start()
        try:
            assert await asyncio.to_thread(store.second.wait, 10.0)
        finally:
            await c.stop()
    assert "tick failed" in caplog.text and "database restarting" in caplog.text
    assert store.holder(LEASE) is None


# -- bandits --------------------------------------------------------------------------------------


def test_bandit_weights_move_toward_the_better_arm_every_cadence(registry: Registry, clock: Clock) -> None:
    store = TrafficStore(registry.database, clock=clock)
    store.put(TrafficPolicy.from_dict({
        "model": MODEL, "kind": "bandit",
        "arms": [{"alias": "champion", "weight": 0.5}, {"alias": "challenger", "weight": 0.5}],
        "bandit": {"algorithm": "thompson", "reward": "binary", "floor": 0.01, "cadence_seconds": 120},
    }), actor="alice")
    fleet = Fleet(store, {"champion": Behaviour(reward_rate=0.10), "challenger": Behaviour(reward_rate=0.12)},
                  seed=9)
    c = controller(registry, fleet, clock)
    challenger_weight, actions = [], []
    for _ in range(20):
        fleet.serve(2_000)
        clock.now += TICK  # every other tick falls inside the 120 s cadence
        actions += [a.action for a in c.tick()]
        policy = store.get(MODEL)
        assert policy is not None and policy.kind == "bandit"
        challenger_weight.append(policy.arm("challenger").weight)
    assert actions == ["wait", "weights"] * 10
    assert challenger_weight[-1] > 0.95 and challenger_weight[-1] > challenger_weight[1]
    assert np.mean(challenger_weight[-4:]) > np.mean(challenger_weight[:4])
    # the rewards of every revision of the experiment count, not only the newest one's
    history = store.history(MODEL)
    assert len(history) == 11 and all(h.policy.kind == "bandit" for h in history)
    assert "rewards" in history[-1].reason


def test_bandit_weights_are_the_thompson_probability_of_being_best_from_all_revisions(
        registry: Registry, clock: Clock) -> None:
    store = TrafficStore(registry.database, clock=clock)
    store.put(TrafficPolicy.from_dict({
        "model": MODEL, "kind": "bandit",
        "arms": [{"alias": "champion", "weight": 0.5}, {"alias": "challenger", "weight": 0.5}],
        "bandit": {"cadence_seconds": 60, "draws": 200_000},
    }), actor="alice")
    fleet = Fleet(store, {}, seed=10)
    fleet.counts[(MODEL, 1)] = {"champion": ArmTotals("champion", reward_n=100, reward_sum=40, reward_sumsq=40),
                                "challenger": ArmTotals("challenger", reward_n=100, reward_sum=45, reward_sumsq=45)}
    c = controller(registry, fleet, clock)
    clock.now += 60
    assert [a.action for a in c.tick()] == ["weights"]
    fleet.counts[(MODEL, 2)] = {"challenger": ArmTotals("challenger", reward_n=50, reward_sum=25, reward_sumsq=25)}
    clock.now += 60
    c.tick()
    policy = store.get(MODEL)
    assert policy is not None
    # P(Beta(1 + 70, 1 + 80) > Beta(1 + 40, 1 + 60)) by quadrature: both revisions' rewards pooled
    challenger, champion = stats.beta(71, 81), stats.beta(41, 61)
    x = np.linspace(0, 1, 200_001)
    p_best = float(np.trapezoid(challenger.pdf(x) * champion.cdf(x), x))
    assert policy.arm("challenger").weight == pytest.approx(p_best, abs=4 * 0.5 / np.sqrt(200_000))


def test_history_runs_start_where_the_step_was_entered(tmp_path: Path, clock: Clock) -> None:
    registry = Registry.from_settings(Settings(home=tmp_path / "home"))
    try:
        store = TrafficStore(registry.database, clock=clock)
        first = store.put(canary_policy(), actor="alice")
        clock.now += 100
        second = store.put(replace(first, step=1), actor="rollout-controller")
        clock.now += 100
        paused = store.put(replace(second, state="paused"), actor="alice")
        clock.now += 100
        resumed = store.put(replace(paused, state="running"), actor="alice")
        run_ = step_revisions(store.history(MODEL), resumed)
        assert run_.revisions == (2, 3, 4) and run_.previous == (1,)
        assert run_.started_at == pytest.approx(clock() - 200)
        clock.now += 100
        rolled = store.put(replace(resumed, state="rolled_back"), actor="rollout-controller")
        restarted = store.put(replace(rolled, state="running"), actor="alice")
        assert step_revisions(store.history(MODEL), restarted).revisions == (6,)  # a fresh start after a rollback
    finally:
        registry.close()
