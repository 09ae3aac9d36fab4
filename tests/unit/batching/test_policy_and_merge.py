"""Pure batching decisions and the merge/split of request arrays."""

from __future__ import annotations

import numpy as np
import pytest

from shipyard.batching.merge import merge, rows, shape_key, split
from shipyard.batching.policy import BatchPolicy, next_limit, should_wait, take
from shipyard.errors import ConfigError


def test_take_fills_up_to_the_limit_in_order() -> None:
    assert take([1, 1, 1, 1], 3) == 3
    assert take([2, 2, 2], 5) == 2
    assert take([1], 64) == 1


def test_take_always_takes_the_first_request_even_when_it_is_over_the_limit() -> None:
    assert take([100, 1], 8) == 1


def test_fixed_policy_keeps_its_limit() -> None:
    p = BatchPolicy(max_batch_size=32)
    assert p.initial_limit() == 32
    assert next_limit(p, 32, batch_latency_ms=1e6) == 32


def test_latency_target_grows_additively_and_backs_off_multiplicatively() -> None:
    p = BatchPolicy(max_batch_size=64, latency_target_ms=10, additive_step=2, backoff=0.5)
    limit = p.initial_limit()
    assert limit == 8
    assert next_limit(p, limit, 5) == 10
    assert next_limit(p, 40, 20) == 20
    assert next_limit(p, 1, 20) == 1  # never below one row
    assert next_limit(p, 64, 1) == 64  # never above the ceiling


def test_latency_target_converges_under_the_target() -> None:
    """A model whose batch latency is 1 ms per row settles near the 20-row point for a 20 ms target."""
    p = BatchPolicy(max_batch_size=256, latency_target_ms=20)
    limit = p.initial_limit()
    seen = []
    for _ in range(200):
        limit = next_limit(p, limit, latency_ms := float(limit))
        seen.append((limit, latency_ms))
    tail = [lim for lim, _ in seen[-50:]]
    assert max(tail) <= 22 and min(tail) >= 10


def test_should_wait_only_when_the_batch_is_short_and_waiting_is_allowed() -> None:
    p = BatchPolicy(max_batch_size=8, max_wait_ms=5)
    assert should_wait(8, 8, 0, p) == 0
    assert should_wait(2, 8, 1, p) == pytest.approx(4)
    assert should_wait(2, 8, 9, p) == 0
    assert should_wait(2, 8, 0, BatchPolicy(max_wait_ms=0)) == 0


@pytest.mark.parametrize("kwargs", [{"max_batch_size": 0}, {"max_wait_ms": -1}, {"latency_target_ms": 0},
                                    {"backoff": 1.5}])
def test_bad_policies_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        BatchPolicy(**kwargs)  # type: ignore[arg-type]


def test_merge_then_split_gives_each_request_its_own_rows() -> None:
    parts = [{"x": np.arange(n, dtype=np.float64) + 10 * i, "s": np.array([f"r{i}"] * n, dtype=object)}
             for i, n in enumerate([1, 3, 2])]
    merged = merge(parts)
    assert rows(merged) == 6
    back = split({"y": merged["x"] * 2, "s": merged["s"]}, [rows(p) for p in parts])
    for p, out in zip(parts, back, strict=True):
        np.testing.assert_array_equal(out["y"], p["x"] * 2)
        assert out["s"].tolist() == p["s"].tolist()


def test_split_refuses_outputs_without_one_row_per_input_row() -> None:
    with pytest.raises(ValueError, match="one row per input row"):
        split({"y": np.zeros(2)}, [1, 2])


def test_shape_key_separates_requests_that_cannot_share_a_batch() -> None:
    a = {"x": np.zeros((2, 3))}
    b = {"x": np.zeros((5, 3))}
    c = {"x": np.zeros((2, 4))}
    assert shape_key(a) == shape_key(b) != shape_key(c)
