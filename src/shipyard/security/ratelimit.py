"""Per-credential request rates: a token bucket for each key or token subject, in this process.

A bucket holds up to ``burst`` requests and refills at ``rate`` per second; a request that
finds it empty is refused with ``RateLimited`` carrying how long until one request's worth
has refilled (the ``Retry-After`` of the 429). Buckets live in one process, so a fleet of N
replicas behind a load balancer allows about N times the rate: limits are a guard against a
runaway client, not a billing meter. The table keeps the most recently used credentials only
(JWT subjects are not bounded by the keys table), so its memory is bounded.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable

from shipyard.errors import RateLimited
from shipyard.security.principal import Principal

#: Credentials whose buckets are kept; the least recently used beyond it start full again.
MAX_BUCKETS = 100_000


class RateLimiter:
    """Token buckets per principal: its own ``rate_per_second`` when it has one, else the default.

    Args:
        rate: default requests per second (0: no limit unless a principal has its own).
        burst: default bucket size; 0 means one second's worth (at least 1).
    """

    def __init__(self, rate: float, burst: int = 0, *, clock: Callable[[], float] = time.monotonic,
                 max_buckets: int = MAX_BUCKETS) -> None:
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self.max_buckets = max_buckets
        self._buckets: OrderedDict[str, list[float]] = OrderedDict()  # key -> [tokens, last refill]

    def take(self, principal: Principal) -> None:
        """Spend one request of ``principal``'s bucket; RateLimited when it is empty."""
        rate = principal.rate_per_second if principal.rate_per_second is not None else self.rate
        if rate <= 0:
            return
        size = float(self.burst) if self.burst > 0 and principal.rate_per_second is None else max(1.0, rate)
        key = f"{principal.kind}:{principal.key_id or principal.name}"
        now = self.clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = [size, now]
            if len(self._buckets) > self.max_buckets:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
            bucket[0] = min(size, bucket[0] + (now - bucket[1]) * rate)
            bucket[1] = now
        if bucket[0] >= 1.0:
            bucket[0] -= 1.0
            return
        wait = (1.0 - bucket[0]) / rate
        raise RateLimited(f"{principal.kind} '{principal.name}'", math.ceil(wait * 100) / 100)
