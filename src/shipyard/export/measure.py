"""Size and latency of a model artifact, the numbers every export variant reports.

* size: bytes on disk (every file of a folder artifact);
* compressed: bytes after deflate at the zip default level, what the artifact
  costs inside a bundle or a download (pruned weights are zeros, which compress);
* latency: the median wall time of one ``predict`` call on 1 row and on 1000
  rows (the check rows repeated), after warm-up calls, on one thread, within a
  time budget so a slow model cannot stall an export.

The clock is injectable so the loop can be tested without waiting.
"""

from __future__ import annotations

import statistics
import time
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

Arrays = Mapping[str, np.ndarray[Any, Any]]


@dataclass(frozen=True)
class Timing:
    """Median milliseconds per call at batch 1 and batch 1000."""

    batch1_ms: float
    batch1000_ms: float


def size_bytes(path: Path) -> int:
    """Bytes on disk of a file, or of every file under a folder."""
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def compressed_bytes(path: Path) -> int:
    """Bytes after deflate (zlib level 6, as zip stores it) of a file or a folder's files."""
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    total = 0
    for f in files:
        c = zlib.compressobj(6)
        with f.open("rb") as fh:
            while chunk := fh.read(1 << 20):
                total += len(c.compress(chunk))
        total += len(c.flush())
    return total


def batch_of(rows: Arrays, n: int) -> dict[str, np.ndarray[Any, Any]]:
    """``n`` rows made by repeating the given rows (first dimension is the batch)."""
    out = {}
    for name, arr in rows.items():
        reps = -(-n // max(1, arr.shape[0]))
        out[name] = np.concatenate([arr] * reps, axis=0)[:n] if arr.ndim else arr
    return out


def median_ms(
    call: Callable[[], Any],
    *,
    budget_s: float,
    max_calls: int,
    warmup: int = 2,
    clock: Callable[[], float] = time.perf_counter,
) -> float:
    """Median milliseconds of ``call()``: at least 3 timed calls, then until the budget or ``max_calls``."""
    for _ in range(warmup):
        call()
    times: list[float] = []
    start = clock()
    while len(times) < 3 or (len(times) < max_calls and clock() - start < budget_s):
        t0 = clock()
        call()
        times.append(clock() - t0)
    return statistics.median(times) * 1000.0


def latency(predict: Callable[[Arrays], Any], rows: Arrays, *, budget_s: float = 1.0) -> Timing:
    """Median latency of ``predict`` at batch 1 and batch 1000 built from ``rows``."""
    one = batch_of({k: v[:1] for k, v in rows.items()}, 1)
    thousand = batch_of(rows, 1000)
    return Timing(
        batch1_ms=median_ms(lambda: predict(one), budget_s=budget_s, max_calls=500),
        batch1000_ms=median_ms(lambda: predict(thousand), budget_s=budget_s, max_calls=100),
    )
