"""Opt-in response cache: LRU with a time-to-live, keyed by model version and canonical input.

The key holds the resolved version number, so when an alias moves, requests
through that alias stop hitting the old version's entries at once; the
repository also drops a model's entries when it sees one of its aliases move.
Inputs are canonical after signature validation (dtype and shape fixed), so two
requests that mean the same rows share an entry whatever JSON spelling they used.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from shipyard.errors import ConfigError
from shipyard.runtime.base import Arrays

CacheKey = tuple[str, int, str]


@dataclass(frozen=True)
class CachePolicy:
    max_entries: int = 10_000
    """Most responses kept; the least recently used goes first."""

    ttl_seconds: float = 300.0
    """How long an entry stays valid."""

    def __post_init__(self) -> None:
        if self.max_entries < 1:
            raise ConfigError(f"cache max_entries must be at least 1, got {self.max_entries}")
        if self.ttl_seconds <= 0:
            raise ConfigError(f"cache ttl_seconds must be positive, got {self.ttl_seconds}")


def cache_key(name: str, version: int, arrays: Arrays, outputs: list[str] | None) -> CacheKey:
    h = hashlib.blake2b(digest_size=20)
    for k, a in arrays.items():
        h.update(k.encode())
        h.update(a.dtype.str.encode())
        h.update(repr(a.shape).encode())
        if a.dtype.kind == "O":
            for x in a.ravel():
                b = x if isinstance(x, bytes) else str(x).encode()
                h.update(len(b).to_bytes(4, "little"))
                h.update(b)
        else:
            h.update(np.ascontiguousarray(a).tobytes())
    h.update(repr(outputs).encode())
    return (name, version, h.hexdigest())


class ResponseCache:
    def __init__(self, policy: CachePolicy, clock: Callable[[], float] = time.monotonic) -> None:
        self.policy = policy
        self._clock = clock
        self._entries: OrderedDict[CacheKey, tuple[float, Arrays]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, key: CacheKey) -> Arrays | None:
        entry = self._entries.get(key)
        if entry is None or entry[0] < self._clock():
            if entry is not None:
                del self._entries[key]
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return entry[1]

    def put(self, key: CacheKey, outputs: Arrays) -> None:
        self._entries[key] = (self._clock() + self.policy.ttl_seconds, outputs)
        self._entries.move_to_end(key)
        while len(self._entries) > self.policy.max_entries:
            self._entries.popitem(last=False)

    def invalidate(self, name: str) -> None:
        """Drop every entry of a model (called when one of its aliases moves)."""
        for key in [k for k in self._entries if k[0] == name]:
            del self._entries[key]

    def __len__(self) -> int:
        return len(self._entries)
