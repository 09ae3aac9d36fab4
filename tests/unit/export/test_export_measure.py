"""Size and latency measurement, with a fake clock instead of real waiting."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from shipyard.export.measure import batch_of, compressed_bytes, median_ms, size_bytes


class FakeClock:
    """Each call() advances time by the next duration; reading the clock costs nothing."""

    def __init__(self, durations: list[float]) -> None:
        self.now = 0.0
        self.durations = iter(durations)

    def __call__(self) -> float:
        return self.now

    def work(self) -> None:
        self.now += next(self.durations, 0.001)


def test_median_of_the_timed_calls_after_warm_up() -> None:
    clock = FakeClock([9.0, 9.0, 0.001, 0.003, 0.002])  # two slow warm-up calls are not counted
    ms = median_ms(clock.work, budget_s=0.0, max_calls=100, warmup=2, clock=clock)
    assert ms == pytest.approx(2.0)


def test_timing_stops_at_the_call_limit_or_the_budget() -> None:
    calls: list[int] = []
    clock = FakeClock([])

    def work() -> None:
        calls.append(1)
        clock.work()

    median_ms(work, budget_s=100.0, max_calls=10, warmup=0, clock=clock)
    assert len(calls) == 10
    calls.clear()
    slow = FakeClock([1.0] * 50)
    median_ms(lambda: (calls.append(1), slow.work()), budget_s=2.5, max_calls=1000, warmup=0, clock=slow)
    assert len(calls) == 3  # at least three, then the budget is spent


def test_batches_repeat_the_rows_to_the_wanted_size() -> None:
    rows = {"a": np.arange(3.0), "b": np.arange(6.0).reshape(3, 2)}
    big = batch_of(rows, 1000)
    assert big["a"].shape == (1000,) and big["b"].shape == (1000, 2)
    assert big["a"][:6].tolist() == [0.0, 1.0, 2.0, 0.0, 1.0, 2.0]
    assert batch_of(rows, 1)["b"].tolist() == [[0.0, 1.0]]


def test_sizes_of_files_and_folders_and_zeros_compress(tmp_path: Path) -> None:
    zeros = tmp_path / "zeros.bin"
    zeros.write_bytes(bytes(100_000))
    noise = tmp_path / "sub" / "noise.bin"
    noise.parent.mkdir()
    noise.write_bytes(np.random.default_rng(0).bytes(1000))
    assert size_bytes(zeros) == 100_000
    assert size_bytes(tmp_path) == 101_000
    assert compressed_bytes(zeros) < 1000
    assert compressed_bytes(noise) > 900
