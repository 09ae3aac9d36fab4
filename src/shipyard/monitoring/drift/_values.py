"""Reading values as a feature's kind, and the binning arithmetic the profile and the window share.

* numbers: ``as_float`` (nulls are None, NaN and +-inf; strings, bytes and other objects are type failures)
* categories: ``category_key`` (compared as strings: ``3``, ``3.0`` and ``"3"`` are one), ``category_counts``
* bins: ``quantile_edges`` (cuts at reference values), ``bin_counts`` (right-closed ``(a, b]``)
* ``reconstruction_error`` for the multivariate PCA
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import numpy as np

MAX_INT_CATEGORIES = 20
"""Integer features with at most this many distinct reference values are categorical."""


def as_float(column: np.ndarray) -> tuple[np.ndarray, int, int]:
    """A column as float64 with NaN for anything that is not a finite number.

    Returns:
        ``(values, nulls, failures)``: nulls are None/NaN/+-inf, failures are values that are not
        numbers at all (strings, bytes, objects); both are NaN in ``values``.
    """
    kind = column.dtype.kind
    if kind in "fiub":
        values = column.astype(np.float64, copy=False)
        bad = ~np.isfinite(values)
        nulls = int(np.count_nonzero(bad))
        if nulls:
            values = np.where(bad, np.nan, values)
        return values, nulls, 0
    if kind != "O":  # strings, bytes, complex, dates: not readable as a number
        return np.full(column.shape[0], np.nan), 0, column.shape[0]
    out = np.empty(column.shape[0], dtype=np.float64)
    nulls = failures = 0
    for i, v in enumerate(column.tolist()):
        if v is None:
            out[i] = np.nan
            nulls += 1
        elif isinstance(v, (int, float, np.integer, np.floating)):
            f = float(v)
            if math.isfinite(f):
                out[i] = f
            else:
                out[i] = np.nan
                nulls += 1
        else:
            out[i] = np.nan
            failures += 1
    return out, nulls, failures


def category_key(value: Any) -> str | None:
    """The string a value is counted under (None for a null); raises TypeError for a non-scalar."""
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)):
        return "True" if value else "False"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        f = float(value)
        if math.isnan(f):
            return None
        return str(int(f)) if f.is_integer() else str(f)
    if isinstance(value, str):
        return value
    if isinstance(value, (bytes, np.bytes_)):
        return bytes(value).decode("utf-8", errors="replace")
    if isinstance(value, (list, tuple, dict, set, np.ndarray)):
        raise TypeError(f"not a category: {type(value).__name__}")
    return str(value)


def category_counts(column: np.ndarray) -> tuple[dict[str, int], int, int]:
    """Count a column's values by category key.

    Returns:
        ``(counts, nulls, failures)``.
    """
    try:
        distinct = Counter(column.tolist())
    except TypeError:  # unhashable values (lists in an object array): one by one
        distinct = Counter()
        failures = 0
        for v in column.tolist():
            try:
                distinct[v] += 1
            except TypeError:
                failures += 1
        counts, nulls, more = _keyed(distinct)
        return counts, nulls, failures + more
    return _keyed(distinct)


def _keyed(distinct: Counter[Any]) -> tuple[dict[str, int], int, int]:
    counts: dict[str, int] = {}
    nulls = failures = 0
    for value, c in distinct.items():
        try:
            key = category_key(value)
        except TypeError:
            failures += c
            continue
        if key is None:
            nulls += c
        else:
            counts[key] = counts.get(key, 0) + c
    return counts, nulls, failures


def kind_of(column: np.ndarray) -> str | None:
    """``numeric``, ``categorical`` or None (not profiled) for a reference column."""
    kind = column.dtype.kind
    if kind == "f":
        return "numeric"
    if kind in "bUSO":
        return "categorical"
    if kind in "iu":
        return "categorical" if np.unique(column).size <= MAX_INT_CATEGORIES else "numeric"
    return None


def quantile_edges(values: np.ndarray, bins: int) -> np.ndarray:
    """Interior cut points at the reference's quantiles: strictly increasing, all below the maximum.

    The cuts are reference values (the inverted CDF, no interpolation), so with right-closed bins no
    reference bin is empty. Duplicates are removed, so a feature with few distinct values gets fewer
    bins; a cut at the maximum would leave the last bin empty, so it is dropped too.
    """
    if values.size == 0 or bins < 2:
        return np.empty(0)
    cuts = np.unique(np.quantile(values, np.linspace(0.0, 1.0, bins + 1)[1:-1], method="inverted_cdf"))
    kept: np.ndarray = cuts[cuts < values.max()]
    return kept


def bin_counts(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Rows per bin ``(edges[i-1], edges[i]]`` of finite ``values``."""
    return np.bincount(np.searchsorted(edges, values, side="left"), minlength=edges.size + 1)


SERVING_PRODUCT_CELLS = 200_000
"""Largest matrix product (rows x features x components) the serving process computes at once."""


def reconstruction_error(z: np.ndarray, components: np.ndarray, *, max_cells: int | None = None) -> np.ndarray:
    """Per row, the mean squared difference between standardized ``z`` and its PCA reconstruction.

    ``max_cells`` computes it in slices of rows whose products stay that small. The server bins
    thousands of rows at a time; OpenBLAS hands a product above about 262,000 multiply-adds to its
    worker threads, which then spin for a while and take a core from the requests. Below that it
    runs on the calling thread, and a slice costs well under a millisecond.
    """
    size = z.shape[1] * max(1, components.shape[0])
    step = z.shape[0] if max_cells is None else max(1, max_cells // max(1, size))
    if z.shape[0] > step:
        return np.concatenate([reconstruction_error(z[i : i + step], components)
                               for i in range(0, z.shape[0], step)])
    residual = z - (z @ components.T) @ components
    error: np.ndarray = np.mean(residual * residual, axis=1)
    return error
