"""Merge several requests' inputs into one batch and split the outputs back (pure)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

Arrays = dict[str, np.ndarray[Any, Any]]


def rows(arrays: Arrays) -> int:
    """Rows in a request (its batch dimension); inputs were validated to agree."""
    for a in arrays.values():
        return int(a.shape[0]) if a.ndim else 1
    return 0


def shape_key(arrays: Arrays) -> tuple[tuple[str, str, tuple[int, ...]], ...]:
    """Requests can share a batch only when every input matches past the batch dimension."""
    return tuple((k, a.dtype.str, tuple(a.shape[1:])) for k, a in arrays.items())


def merge(parts: Sequence[Arrays]) -> Arrays:
    """Concatenate same-shaped requests along the batch dimension."""
    if len(parts) == 1:
        return parts[0]
    return {k: np.concatenate([p[k] for p in parts], axis=0) for k in parts[0]}


def split(outputs: Arrays, sizes: Sequence[int]) -> list[Arrays]:
    """Cut batch outputs back into one dict per request, in order."""
    if len(sizes) == 1:
        return [outputs]
    total = sum(sizes)
    for name, a in outputs.items():
        if a.ndim == 0 or a.shape[0] != total:
            raise ValueError(
                f"output '{name}' has {a.shape[0] if a.ndim else 'no'} rows for a batch of {total}; "
                "a batched model must return one row per input row"
            )
    bounds = np.cumsum(sizes)[:-1]
    per_output = {name: np.split(a, bounds) for name, a in outputs.items()}
    return [{name: chunks[i] for name, chunks in per_output.items()} for i in range(len(sizes))]
