"""Traffic policies: split accuracy, sticky and monotone assignment, shadows, parsing."""

from __future__ import annotations

import random

import numpy as np
import pytest

from shipyard.errors import ConfigError
from shipyard.rollout.policy import Arm, TrafficPolicy, canary_weights, choose, copied, same_spec, unit_hash
from shipyard.rollout.statistics import sample_ratio_mismatch

KEYS = [f"user-{i}" for i in range(100_000)]


def split(weights: dict[str, float], **kw: object) -> TrafficPolicy:
    return TrafficPolicy.from_dict({"model": "m", "arms": [{"alias": a, "weight": w} for a, w in weights.items()],
                                    **kw})


def assign(policy: TrafficPolicy, keys: list[str]) -> list[str]:
    return [choose(policy.primaries, k, 0.0, policy.salt).name for k in keys]


def test_sticky_split_lands_within_half_a_point_and_srm_does_not_fire() -> None:
    policy = split({"champion": 90, "challenger": 10})
    arms = assign(policy, KEYS)
    share = arms.count("challenger") / len(arms)
    assert abs(share - 0.10) < 0.005, share
    srm = sample_ratio_mismatch([arms.count("champion"), arms.count("challenger")], [0.9, 0.1])
    assert not srm.mismatch, srm


def test_random_split_lands_within_half_a_point() -> None:
    policy = split({"a": 70, "b": 20, "c": 10})
    rng = random.Random(7)
    arms = [choose(policy.primaries, None, rng.random()).name for _ in range(100_000)]
    for name, want in (("a", 0.7), ("b", 0.2), ("c", 0.1)):
        assert abs(arms.count(name) / len(arms) - want) < 0.005
    assert not sample_ratio_mismatch([arms.count(n) for n in "abc"], [0.7, 0.2, 0.1]).mismatch


def test_three_way_sticky_split_matches_the_weights() -> None:
    policy = split({"a": 50, "b": 30, "c": 20})
    arms = assign(policy, KEYS)
    for name, want in (("a", 0.5), ("b", 0.3), ("c", 0.2)):
        assert abs(arms.count(name) / len(arms) - want) < 0.005


def test_raising_an_arm_moves_no_unit_out_of_it() -> None:
    before = assign(split({"champion": 90, "challenger": 10}), KEYS)
    after = assign(split({"champion": 80, "challenger": 20}), KEYS)
    was_in = [i for i, a in enumerate(before) if a == "challenger"]
    assert was_in and all(after[i] == "challenger" for i in was_in)  # 0 units switch back
    moved = sum(1 for b, a in zip(before, after, strict=True) if b != a)
    assert abs(moved / len(KEYS) - 0.10) < 0.005  # only the new 10% moved, all of them into challenger


def test_a_canary_ramp_only_ever_adds_units_to_the_candidate() -> None:
    policy = TrafficPolicy.from_dict({
        "model": "m", "arms": ["champion", "challenger"],
        "canary": {"stable": "champion", "candidate": "challenger", "steps": [0.01, 0.05, 0.2, 0.5, 1.0]},
    })
    seen: set[int] = set()
    for step in range(5):
        at_step = policy.with_weights(canary_weights(TrafficPolicy.from_dict({**policy.to_dict(), "step": step})))
        arms = assign(at_step, KEYS[:20_000])
        now = {i for i, a in enumerate(arms) if a == "challenger"}
        assert seen <= now
        assert abs(len(now) / 20_000 - at_step.arm("challenger").weight) < 0.01
        seen = now
    assert len(seen) == 20_000


def test_the_same_key_gets_the_same_arm_whatever_the_arm_order_and_process() -> None:
    policy = split({"a": 50, "b": 50})
    reversed_order = TrafficPolicy.from_dict({**policy.to_dict(), "arms": policy.to_dict()["arms"][::-1]})
    assert assign(policy, KEYS[:5000]) == assign(reversed_order, KEYS[:5000])
    # the hash is blake2b of (salt, arm, key): a fixed function, not Python's per-process salted hash()
    assert unit_hash("m", "a", "user-1") == unit_hash("m", "a", "user-1")
    assert 0 < unit_hash("m", "a", "user-1") < 1


def test_a_new_salt_reshuffles_units() -> None:
    a = assign(split({"a": 50, "b": 50}), KEYS[:10_000])
    b = assign(split({"a": 50, "b": 50}, salt="experiment-2"), KEYS[:10_000])
    same = sum(x == y for x, y in zip(a, b, strict=True)) / 10_000
    assert 0.45 < same < 0.55  # independent assignments agree half the time


def test_zero_weight_arms_never_win() -> None:
    arms = (Arm("a", "a", 1.0), Arm("b", "b", 0.0))
    assert {choose(arms, k, 0.0).name for k in KEYS[:2000]} == {"a"}
    assert {choose(arms, None, u).name for u in np.linspace(0, 0.999999, 1000)} == {"a"}


def test_shadow_copies_the_given_share() -> None:
    shadow = Arm("candidate", "candidate", 0.05, "shadow")
    rng = random.Random(3)
    copies = sum(copied(shadow, None, rng.random()) for _ in range(100_000))
    assert abs(copies / 100_000 - 0.05) < 0.003
    sticky = [copied(shadow, k, 0.0, "m") for k in KEYS[:50_000]]
    assert sticky == [copied(shadow, k, 0.9, "m") for k in KEYS[:50_000]]  # a key is copied or not, always
    assert abs(sum(sticky) / 50_000 - 0.05) < 0.005


def test_a_traffic_block_round_trips_through_json() -> None:
    policy = TrafficPolicy.from_dict({
        "model": "fraud", "sticky": "header:X-User",
        "arms": [{"alias": "champion", "percent": 90}, {"version": 3, "percent": 10, "name": "v3"}],
        "shadow": [{"alias": "candidate", "percent": 5}],
    })
    assert [a.name for a in policy.primaries] == ["champion", "v3"]
    assert policy.arm("v3").ref("fraud").version == 3
    assert policy.shadows[0].weight == pytest.approx(0.05)
    assert policy.sticky_header == "x-user"
    assert TrafficPolicy.from_dict(policy.to_dict()) == policy


@pytest.mark.parametrize(("data", "message"), [
    ({"arms": []}, "needs at least one primary arm"),
    ({"arms": ["a", "a"]}, "arm names must be unique"),
    ({"arms": [{"alias": "a", "weight": -1}]}, "weight must be a finite number >= 0"),
    ({"arms": [{"alias": "a", "version": 2}]}, "exactly one of target, alias or version"),
    ({"arms": ["a"], "shadow": [{"alias": "b", "weight": 2}]}, "the share copied is 0..1 as a weight"),
    ({"arms": ["a"], "sticky": "cookie"}, "sticky must be 'header:NAME' or 'field:NAME'"),
    ({"arms": ["a", "b"], "canary": {"stable": "a", "candidate": "c"}}, "canary arm 'c' is not one of"),
    ({"arms": ["a", "b"], "canary": {"stable": "a", "candidate": "b", "steps": [0.5, 0.2]}}, "steps must rise"),
    ({"arms": [{"version": 1}, "b"], "canary": {"stable": "1", "candidate": "b"}}, "must name an alias"),
    ({"arms": ["a"], "bandit": {"algorithm": "thompson"}}, "a bandit needs at least two primary arms"),
    ({"arms": ["a"], "wieghts": 1}, "unknown keys ['wieghts']"),
])
def test_bad_policies_are_refused_naming_the_problem(data: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]").replace(".", r"\.")):
        TrafficPolicy.from_dict({"model": "m", **data})


def test_same_spec_ignores_progress_but_not_the_experiment() -> None:
    canary = TrafficPolicy.from_dict({"model": "m", "arms": ["a", "b"], "canary": {"stable": "a", "candidate": "b"}})
    progressed = TrafficPolicy.from_dict({**canary.to_dict(), "step": 3, "revision": 9, "state": "paused"})
    assert same_spec(canary, progressed)
    other = TrafficPolicy.from_dict({**canary.to_dict(), "canary": {**canary.to_dict()["canary"], "steps": [0.5, 1]}})
    assert not same_spec(canary, other)
    assert not same_spec(split({"a": 90, "b": 10}), split({"a": 80, "b": 20}))  # a split's weights are the spec
