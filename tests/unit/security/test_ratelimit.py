"""Per-credential token buckets: the rate, the burst, a key's own rate, and Retry-After."""

from __future__ import annotations

import pytest

from shipyard.errors import RateLimited
from shipyard.security.principal import Principal
from shipyard.security.ratelimit import RateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def key(name: str, rate: float | None = None) -> Principal:
    return Principal(name, "key", frozenset({"predict"}), key_id=f"id-{name}", rate_per_second=rate)


def allowed(limiter: RateLimiter, principal: Principal, n: int) -> int:
    ok = 0
    for _ in range(n):
        try:
            limiter.take(principal)
            ok += 1
        except RateLimited:
            pass
    return ok


def test_a_bucket_allows_its_burst_then_refills_at_the_rate() -> None:
    clock = Clock()
    limiter = RateLimiter(10, 20, clock=clock)
    a = key("a")
    assert allowed(limiter, a, 50) == 20  # the burst, at once
    with pytest.raises(RateLimited) as refused:
        limiter.take(a)
    assert refused.value.retry_after == pytest.approx(0.1)  # one request's worth at 10/s
    assert refused.value.kind == "rate_limited"
    clock.now += 0.5
    assert allowed(limiter, a, 50) == 5  # half a second at 10/s
    clock.now += 100
    assert allowed(limiter, a, 50) == 20  # refilled to the burst, not beyond


def test_credentials_have_buckets_of_their_own_and_a_keys_rate_wins() -> None:
    clock = Clock()
    limiter = RateLimiter(2, 0, clock=clock)  # burst 0: one second's worth
    assert allowed(limiter, key("a"), 10) == 2
    assert allowed(limiter, key("b"), 10) == 2  # a's bucket does not drain b's
    assert allowed(limiter, key("fast", rate=7), 10) == 7
    assert allowed(limiter, key("slow", rate=0.5), 10) == 1  # at least one request


def test_no_rate_means_no_limit_and_the_table_is_bounded() -> None:
    clock = Clock()
    assert allowed(RateLimiter(0, clock=clock), key("a"), 1000) == 1000
    limiter = RateLimiter(1, 1, clock=clock, max_buckets=3)
    for name in "abcd":
        limiter.take(key(name))
    assert len(limiter._buckets) == 3
    limiter.take(key("a"))  # a's bucket was the least recently used, dropped: it starts full again
