"""Find the rows of a batch that fail the signature, and say why for each one.

The signature check (``Signature.validate``) stops at the first problem in a
whole batch. A batch job needs the opposite: keep every good row and name the
reason for every bad one. ``isolate`` does that with plain data and the
signature only (no model, no I/O):

1. The whole batch passes: nothing to do (the common case costs one check).
2. Rows that are suspect at a glance (NaN or infinity where the signature
   wants finite numbers, a fraction where it wants integers, a null in a
   column of objects) are checked one by one, which gives their exact reason.
3. The other rows are checked by halves: a half that passes is kept whole, a
   half that fails is split again, down to single rows. A few bad rows among
   many cost a few dozen checks, not one per row.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from shipyard.errors import InvalidInput
from shipyard.signature import Signature

Arrays = Mapping[str, np.ndarray[Any, Any]]

_FLOAT = {"FP16", "FP32", "FP64"}
_INT = {"INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"}
# One row is checked at a time, so "at position 0" says nothing; the rejects file has the row number.
_POSITION = re.compile(r" at position 0$")


@dataclass(frozen=True)
class RowError:
    """Why one row of a batch was rejected."""

    row: int
    """Index of the row within the batch."""

    field: str | None
    """The input at fault, when the check names one."""

    reason: str
    """The signature's message, e.g. ``input 'x': expected finite numbers, got nan``."""


def take(arrays: Arrays, rows: np.ndarray[Any, Any]) -> dict[str, np.ndarray[Any, Any]]:
    """The given rows (an index array) of every array."""
    return {k: v[rows] for k, v in arrays.items()}


def isolate(signature: Signature, arrays: Arrays, n_rows: int) -> tuple[np.ndarray[Any, Any], list[RowError]]:
    """Split a batch into good and bad rows.

    Args:
        signature: what the model accepts.
        arrays: one array per signature input, each with ``n_rows`` rows, as read.
        n_rows: the batch size.

    Returns:
        A boolean mask of the good rows and one ``RowError`` per bad row, by row order.
    """
    valid = np.ones(n_rows, dtype=bool)
    if n_rows == 0:
        return valid, []
    if _error(signature, arrays) is None:
        return valid, []
    errors: dict[int, RowError] = {}
    suspects = _suspect_rows(signature, arrays, n_rows)
    for suspect in np.flatnonzero(suspects).tolist():
        err = _error(signature, take(arrays, np.array([suspect])))
        if err is not None:
            errors[suspect] = RowError(suspect, err.field, _POSITION.sub("", str(err)))
    stack = [np.flatnonzero(~suspects)]
    while stack:
        rows = stack.pop()
        if rows.size == 0:
            continue
        err = _error(signature, take(arrays, rows))
        if err is None:
            continue
        if rows.size == 1:
            row = int(rows[0])
            errors[row] = RowError(row, err.field, _POSITION.sub("", str(err)))
            continue
        half = rows.size // 2
        stack.append(rows[half:])
        stack.append(rows[:half])
    valid[list(errors)] = False
    return valid, [errors[i] for i in sorted(errors)]


def _error(signature: Signature, arrays: Arrays) -> InvalidInput | None:
    try:
        signature.validate(arrays)
    except InvalidInput as exc:
        return exc
    return None


def _suspect_rows(signature: Signature, arrays: Arrays, n_rows: int) -> np.ndarray[Any, Any]:
    """Rows that would likely fail, found with vectorised checks (a guess; each is re-checked)."""
    suspect = np.zeros(n_rows, dtype=bool)
    for spec in signature.inputs:
        arr = arrays.get(spec.name)
        if not isinstance(arr, np.ndarray) or arr.ndim == 0 or arr.shape[0] != n_rows:
            continue
        flat = arr.reshape(n_rows, -1)
        if arr.dtype.kind == "f" and spec.datatype in _FLOAT and not spec.allow_nan:
            suspect |= ~np.isfinite(flat).all(axis=1)
        elif arr.dtype.kind == "f" and spec.datatype in _INT:
            finite = np.isfinite(flat)
            whole = np.equal(np.mod(np.where(finite, flat, 0.0), 1), 0)
            suspect |= ~(finite & whole).all(axis=1)
        elif arr.dtype.kind == "O":
            suspect |= np.fromiter((any(x is None for x in row) for row in flat), dtype=bool, count=n_rows)
    return suspect
