"""The response cache: LRU order, time-to-live, per-model invalidation, canonical keys."""

from __future__ import annotations

import numpy as np
import pytest

from shipyard.errors import ConfigError
from shipyard.serving.cache import CachePolicy, ResponseCache, cache_key


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def out(v: float) -> dict[str, np.ndarray]:
    return {"y": np.array([v])}


def test_least_recently_used_entry_goes_first() -> None:
    c = ResponseCache(CachePolicy(max_entries=2, ttl_seconds=60))
    k1, k2, k3 = (("m", 1, str(i)) for i in range(3))
    c.put(k1, out(1))
    c.put(k2, out(2))
    assert c.get(k1) is not None  # k1 is now the most recent
    c.put(k3, out(3))
    assert c.get(k2) is None and c.get(k1) is not None and c.get(k3) is not None


def test_entries_expire_after_their_ttl() -> None:
    clock = Clock()
    c = ResponseCache(CachePolicy(max_entries=10, ttl_seconds=5), clock=clock)
    c.put(("m", 1, "a"), out(1))
    clock.now = 4.9
    assert c.get(("m", 1, "a")) is not None
    clock.now = 5.1
    assert c.get(("m", 1, "a")) is None
    assert len(c) == 0


def test_invalidate_drops_only_that_models_entries() -> None:
    c = ResponseCache(CachePolicy())
    c.put(("a", 1, "x"), out(1))
    c.put(("a", 2, "y"), out(2))
    c.put(("b", 1, "x"), out(3))
    c.invalidate("a")
    assert len(c) == 1 and c.get(("b", 1, "x")) is not None


def test_keys_depend_on_version_values_and_requested_outputs() -> None:
    x = {"x": np.array([1.0, 2.0])}
    base = cache_key("m", 1, x, None)
    assert cache_key("m", 1, {"x": np.array([1.0, 2.0])}, None) == base
    assert cache_key("m", 2, x, None) != base
    assert cache_key("m", 1, {"x": np.array([1.0, 2.5])}, None) != base
    assert cache_key("m", 1, x, ["y"]) != base
    assert cache_key("m", 1, {"s": np.array(["a", "b"], dtype=object)}, None) != cache_key(
        "m", 1, {"s": np.array(["ab", ""], dtype=object)}, None
    )


@pytest.mark.parametrize("kwargs", [{"max_entries": 0}, {"ttl_seconds": 0}])
def test_bad_cache_settings_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        CachePolicy(**kwargs)  # type: ignore[arg-type]
