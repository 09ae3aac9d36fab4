"""When to flush a batch and how large it may grow: pure functions over plain numbers.

Two modes:

* fixed: a batch closes at ``max_batch_size`` rows or once its oldest request has
  waited ``max_wait_ms``, whichever comes first; while the model is busy, requests
  queue and go together into the next call, so batches grow with load by themselves.
* latency target: the row limit adapts by additive increase / multiplicative
  decrease (as in Clipper): grow by a step while observed batch latency stays
  under the target, cut by a factor when it goes over, so p99 stays under the
  target while throughput is as high as it allows.
"""

from __future__ import annotations

from dataclasses import dataclass

from shipyard.errors import ConfigError


@dataclass(frozen=True)
class BatchPolicy:
    """Batching settings of one model."""

    max_batch_size: int = 64
    """Most rows merged into one model call (the upper bound in latency-target mode)."""

    max_wait_ms: float = 0.0
    """Longest the first request of a batch waits for company when the model is idle."""

    latency_target_ms: float | None = None
    """If set, adapt the row limit so batch latency stays under this (AIMD)."""

    additive_step: int = 2
    """Rows added to the limit after a batch under the target."""

    backoff: float = 0.7
    """Factor applied to the limit after a batch over the target."""

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ConfigError(f"max_batch_size must be at least 1, got {self.max_batch_size}")
        if self.max_wait_ms < 0:
            raise ConfigError(f"max_wait_ms must not be negative, got {self.max_wait_ms}")
        if self.latency_target_ms is not None and self.latency_target_ms <= 0:
            raise ConfigError(f"latency_target_ms must be positive, got {self.latency_target_ms}")
        if not 0 < self.backoff < 1:
            raise ConfigError(f"backoff must be between 0 and 1, got {self.backoff}")

    def initial_limit(self) -> int:
        return self.max_batch_size if self.latency_target_ms is None else max(1, min(8, self.max_batch_size))


def next_limit(policy: BatchPolicy, limit: int, batch_latency_ms: float) -> int:
    """The row limit after a batch that took ``batch_latency_ms`` (AIMD; fixed mode keeps it)."""
    target = policy.latency_target_ms
    if target is None:
        return policy.max_batch_size
    if batch_latency_ms > target:
        return max(1, int(limit * policy.backoff))
    return min(policy.max_batch_size, limit + policy.additive_step)


def take(queued_rows: list[int], limit: int) -> int:
    """How many queued requests (front first) fit in one batch of at most ``limit`` rows.

    The first request always goes, even alone over the limit, so a large request is
    never starved.
    """
    total = 0
    for i, n in enumerate(queued_rows):
        if i and total + n > limit:
            return i
        total += n
    return len(queued_rows)


def should_wait(queued_rows: int, limit: int, oldest_wait_ms: float, policy: BatchPolicy) -> float:
    """Milliseconds still worth waiting for more rows before calling the model (0 = go now)."""
    if queued_rows >= limit or policy.max_wait_ms <= 0:
        return 0.0
    return max(0.0, policy.max_wait_ms - oldest_wait_ms)
