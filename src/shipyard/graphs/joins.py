"""Joins of a fan-out's branches, and the row bookkeeping of a switch: pure functions over arrays.

``mean`` and ``weighted`` average each output elementwise (as FP64); ``vote`` takes,
per row and per output, the value most branches gave, a tie going to the branch
listed first among the tied values.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from shipyard.runtime.base import Arrays


def mean(results: Sequence[Arrays]) -> Arrays:
    return weighted(results, [1.0] * len(results))


def weighted(results: Sequence[Arrays], weights: Sequence[float]) -> Arrays:
    """The weighted mean of each output (weights normalised over the branches given)."""
    total = float(sum(weights))
    out: Arrays = {}
    for name in results[0]:
        acc = np.zeros(np.shape(results[0][name]), dtype=np.float64)
        for r, w in zip(results, weights, strict=True):
            acc += np.asarray(r[name], dtype=np.float64) * (w / total)
        out[name] = acc
    return out


def vote(results: Sequence[Arrays]) -> Arrays:
    """Per row and output, the most common value; ties go to the earliest branch among the tied."""
    out: Arrays = {}
    for name in results[0]:
        stacked = [np.asarray(r[name]) for r in results]
        first = stacked[0]
        rows = first.shape[0] if first.ndim else 1
        if first.ndim == 1 and all(a.dtype.kind in "biuf" for a in stacked):
            out[name] = _vote_numbers(np.stack(stacked))
            continue
        winners = []
        for i in range(rows):
            values = [a[i] if a.ndim else a for a in stacked]
            keys = [_key(v) for v in values]
            counts = {k: keys.count(k) for k in keys}
            best = max(counts.values())
            winners.append(values[next(j for j, k in enumerate(keys) if counts[k] == best)])
        out[name] = np.asarray(winners, dtype=first.dtype if first.dtype.kind != "U" else object)
    return out


def _vote_numbers(stacked: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """``vote`` over (branches, rows) numbers, vectorised."""
    # counts[j, i]: how many branches gave row i the value branch j gave it
    counts = (stacked[:, None, :] == stacked[None, :, :]).sum(axis=1)
    best = counts.argmax(axis=0)  # argmax takes the first maximum: the earliest branch among the tied
    return stacked[best, np.arange(stacked.shape[1])]  # type: ignore[no-any-return]


def _key(value: Any) -> Any:
    arr = np.asarray(value)
    return (arr.dtype.str, arr.shape, arr.tobytes()) if arr.dtype.kind != "O" else repr(arr.tolist())


def rows_of(arrays: Arrays) -> int:
    first = next(iter(arrays.values()), None)
    return 0 if first is None else (int(first.shape[0]) if first.ndim else 1)


def take(arrays: Arrays, index: np.ndarray[Any, Any]) -> Arrays:
    return {k: v[index] for k, v in arrays.items()}


def reassemble(parts: Sequence[tuple[np.ndarray[Any, Any], Arrays]]) -> Arrays:
    """The outputs of row groups (row indices, outputs) put back in the rows' order."""
    order = np.argsort(np.concatenate([idx for idx, _ in parts]), kind="stable")
    out: Arrays = {}
    for name in parts[0][1]:
        out[name] = np.concatenate([np.asarray(o[name]) for _, o in parts])[order]
    return out


def constant(values: dict[str, Any], rows: int) -> Arrays:
    """``values`` repeated for ``rows`` rows (an optional step's ``default``)."""
    out: Arrays = {}
    for name, value in values.items():
        one = np.asarray(value)
        if one.dtype.kind == "U":
            one = one.astype(object)
        out[name] = np.repeat(one[None, ...], rows, axis=0)
    return out
