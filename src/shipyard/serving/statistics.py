"""Inference statistics per model version, counted where every transport passes: ``DataPlane.infer``.

The layout is Triton's statistics extension (what tritonclient's
``get_inference_statistics`` and perf_analyzer read), so the same document is
served as ``GET /v2/models[/NAME[/versions/V]]/stats`` and gRPC ``ModelStatistics``.
What each figure means here:

* ``success`` / ``fail``: requests answered or refused once the model was
  resolved (a body that cannot be decoded, or an unknown model, names no version
  and is not counted), with the time each spent in the data plane;
* ``queue``: per request that reached a model call, the time it waited in the
  batcher for its batch to start (0 without batching: shipyard does not queue a
  request itself; waiting for a free worker process counts as compute);
* ``compute_infer``: per request, the time of the model call it rode in;
* ``cache_hit`` / ``cache_miss``: response-cache lookups and their time;
* ``inference_count``: rows answered (cache hits included); ``execution_count``:
  model calls (several requests merged into a batch are one call), each also in
  ``batch_stats`` under its number of rows.

Counting is a few integer additions on the event loop per request (no lock: the
data plane runs on one loop); timings are ``time.perf_counter_ns`` differences.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

#: The InferStatistics durations, in Triton's order.
DURATIONS = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output", "cache_hit", "cache_miss")


class ModelStats:
    """The cumulative counters of one model version."""

    __slots__ = ("batches", "counts", "executions", "last_inference_ms", "nanos", "rows")

    def __init__(self) -> None:
        self.counts = dict.fromkeys(DURATIONS, 0)
        self.nanos = dict.fromkeys(DURATIONS, 0)
        self.rows = 0
        self.executions = 0
        self.last_inference_ms = 0
        self.batches: dict[int, list[int]] = {}  # rows of a model call -> [calls, ns]

    def succeeded(self, rows: int, ns: int) -> None:
        """One request answered with ``rows`` rows, ``ns`` after it entered the data plane."""
        self.counts["success"] += 1
        self.nanos["success"] += ns
        self.rows += rows
        self.last_inference_ms = time.time_ns() // 1_000_000

    def failed(self, ns: int) -> None:
        self.counts["fail"] += 1
        self.nanos["fail"] += ns

    def cache(self, hit: bool, ns: int) -> None:
        key = "cache_hit" if hit else "cache_miss"
        self.counts[key] += 1
        self.nanos[key] += ns

    def executed(self, rows: int, ns: int, requests: int = 1, queued_ns: int = 0) -> None:
        """One model call of ``rows`` rows taking ``ns``, for ``requests`` requests that waited ``queued_ns`` in all."""
        self.executions += 1
        self.counts["queue"] += requests
        self.nanos["queue"] += queued_ns
        self.counts["compute_infer"] += requests
        self.nanos["compute_infer"] += ns * requests  # each request waited for the whole call
        batch = self.batches.get(rows)
        if batch is None:
            self.batches[rows] = [1, ns]
        else:
            batch[0] += 1
            batch[1] += ns

    def document(self, name: str, version: int) -> dict[str, Any]:
        """This version's ``$model_stat`` object (Triton's JSON names; counts and ns are numbers)."""
        return {
            "name": name,
            "version": str(version),
            "last_inference": self.last_inference_ms,
            "inference_count": self.rows,
            "execution_count": self.executions,
            "inference_stats": {k: {"count": self.counts[k], "ns": self.nanos[k]} for k in DURATIONS},
            "batch_stats": [
                {
                    "batch_size": rows,
                    "compute_input": {"count": 0, "ns": 0},
                    "compute_infer": {"count": calls, "ns": ns},
                    "compute_output": {"count": 0, "ns": 0},
                }
                for rows, (calls, ns) in sorted(self.batches.items())
            ],
        }


class InferenceStatistics:
    """Every model version's ModelStats, created on first use."""

    def __init__(self) -> None:
        self._models: dict[tuple[str, int], ModelStats] = {}

    def of(self, name: str, version: int) -> ModelStats:
        key = (name, version)
        stats = self._models.get(key)
        if stats is None:
            stats = self._models[key] = ModelStats()
        return stats

    def document(self, versions: Iterable[tuple[str, int]]) -> dict[str, Any]:
        """``{"model_stats": [...]}`` for these versions, in order (zeros for one never used)."""
        out = []
        for name, version in versions:
            stats = self._models.get((name, version)) or ModelStats()
            out.append(stats.document(name, version))
        return {"model_stats": out}

    def known(self) -> list[tuple[str, int]]:
        """The versions that have counted something."""
        return list(self._models)
