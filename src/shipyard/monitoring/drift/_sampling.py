"""Reservoir sampling plans (Algorithm R), shared by the profile builder and the window.

A plan says which incoming rows go where; the caller applies it to its own storage, so the same
arithmetic serves a dict of typed columns and a float matrix alike.
"""

from __future__ import annotations

import numpy as np


def reservoir_plan(seen: int, rows: int, capacity: int,
                   rng: np.random.Generator) -> tuple[int, np.ndarray, np.ndarray]:
    """Feed ``rows`` new rows to a reservoir that has seen ``seen`` rows so far.

    Equivalent to Algorithm R run row by row, but drawn in one vectorized call.

    Args:
        seen: rows offered to the reservoir before this batch.
        rows: rows in this batch.
        capacity: the reservoir's size.
        rng: the reservoir's generator.

    Returns:
        ``(fill, src, dst)``: append the batch's first ``fill`` rows, then put batch row ``src[i]``
        in slot ``dst[i]`` (each slot at most once: the last replacement wins, as it would row by row).
    """
    fill = max(0, min(rows, capacity - seen))
    rest = rows - fill
    if rest <= 0:
        empty = np.empty(0, dtype=np.intp)
        return fill, empty, empty
    index = np.arange(seen + fill, seen + rows, dtype=np.int64)  # 0-based global index of each row
    slot = rng.integers(0, index + 1)
    keep = slot < capacity
    src = np.flatnonzero(keep) + fill
    dst = slot[keep]
    if dst.size > 1:
        # the last replacement of a slot wins: unique over the reversed order finds it
        _, last = np.unique(dst[::-1], return_index=True)
        pick = np.sort(dst.size - 1 - last)
        src, dst = src[pick], dst[pick]
    return fill, src.astype(np.intp), dst.astype(np.intp)


def merge_plan(seen_a: int, held_a: int, seen_b: int, held_b: int, capacity: int,
               rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Which rows of two reservoirs make a fair reservoir of their union.

    Every row of the union keeps an equal chance: the number taken from ``a`` is hypergeometric
    (as if ``capacity`` rows were drawn from all ``seen_a + seen_b``), and a uniform subset of a
    uniform sample is uniform.

    Returns:
        ``(from_a, from_b)``: indices into each reservoir's held rows.
    """
    if held_a + held_b <= capacity or seen_a + seen_b <= capacity:
        return np.arange(held_a, dtype=np.intp), np.arange(held_b, dtype=np.intp)
    if seen_a == 0 or seen_b == 0:
        take_a = min(held_a, capacity) if seen_b == 0 else 0
    else:
        take_a = int(rng.hypergeometric(seen_a, seen_b, capacity))
    take_a = min(take_a, held_a)
    take_b = min(capacity - take_a, held_b)
    from_a = np.sort(rng.choice(held_a, size=take_a, replace=False)).astype(np.intp)
    from_b = np.sort(rng.choice(held_b, size=take_b, replace=False)).astype(np.intp)
    return from_a, from_b
