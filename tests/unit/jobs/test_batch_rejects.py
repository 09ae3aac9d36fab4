"""Finding the bad rows of a batch: same verdict as checking every row on its own, far fewer checks."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from shipyard.errors import InvalidInput
from shipyard.jobs.batch.rejects import RowError, isolate
from shipyard.signature import Signature, TensorSpec

SIG = Signature(
    inputs=(
        TensorSpec("x", "FP64", (-1,)),
        TensorSpec("n", "INT8", (-1,)),
        TensorSpec("city", "BYTES", (-1,)),
    ),
    format="columns",
)


def rows(n: int) -> dict[str, np.ndarray[Any, Any]]:
    city = np.empty(n, dtype=object)
    city[:] = ["Oslo"] * n
    return {"x": np.linspace(0, 1, n), "n": np.arange(n) % 100, "city": city}


def one_by_one(sig: Signature, arrays: dict[str, np.ndarray[Any, Any]], n: int) -> dict[int, str | None]:
    """The oracle: check each row alone."""
    bad: dict[int, str | None] = {}
    for i in range(n):
        try:
            sig.validate({k: v[i : i + 1] for k, v in arrays.items()})
        except InvalidInput as exc:
            bad[i] = exc.field
    return bad


def test_a_clean_batch_has_no_rejects() -> None:
    valid, errors = isolate(SIG, rows(1000), 1000)
    assert valid.all() and errors == []


def test_an_empty_batch_has_no_rejects() -> None:
    valid, errors = isolate(SIG, {k: v[:0] for k, v in rows(3).items()}, 0)
    assert valid.shape == (0,) and errors == []


def test_each_bad_row_is_found_with_its_field_and_reason() -> None:
    a = rows(10_000)
    a["x"][[5, 4000]] = [np.nan, np.inf]  # caught by the quick NaN scan
    a["n"][[17, 9999]] = [300, -200]  # out of INT8 range: found by halving
    a["city"][[2500]] = [None]  # a null among strings
    a["city"][[7777]] = [3.5]  # a number among strings
    valid, errors = isolate(SIG, a, 10_000)
    assert [e.row for e in errors] == [5, 17, 2500, 4000, 7777, 9999]
    assert [e.field for e in errors] == ["x", "n", "city", "x", "city", "n"]
    assert errors[0] == RowError(5, "x", "input 'x': expected finite numbers, got nan")
    assert errors[1].reason == "input 'n': expected values within INT8 range, got values out of range"
    assert errors[2].reason == "input 'city': expected strings, got null"
    assert int((~valid).sum()) == 6 and not valid[[5, 17, 2500, 4000, 7777, 9999]].any()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_isolate_agrees_with_checking_every_row_alone(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 2000
    a = rows(n)
    a["x"][rng.integers(0, n, 40)] = np.nan
    a["n"] = a["n"].astype(np.int64)
    a["n"][rng.integers(0, n, 40)] = 1000
    valid, errors = isolate(SIG, a, n)
    oracle = one_by_one(SIG, a, n)
    assert {e.row: e.field for e in errors} == oracle
    assert set(np.flatnonzero(~valid).tolist()) == set(oracle)


def test_text_that_should_be_numbers_is_named_per_row() -> None:
    sig = Signature(inputs=(TensorSpec("x", "FP64", (-1,)), TensorSpec("k", "INT64", (-1,))), format="columns")
    x = np.empty(4, dtype=object)
    x[:] = [1.5, "abc", 2.0, None]
    k = np.array([1.0, 2.0, 2.5, 4.0])  # 2.5 is not a whole number
    valid, errors = isolate(sig, {"x": x, "k": k}, 4)
    assert valid.tolist() == [True, False, False, False]
    assert [(e.row, e.field) for e in errors] == [(1, "x"), (2, "k"), (3, "x")]
    assert errors[0].reason == "input 'x': expected FP64, got str 'abc'"
    assert errors[2].reason == "input 'x': expected FP64, got null"


def test_a_whole_bad_batch_is_rejected_row_by_row() -> None:
    a = rows(500)
    a["x"][:] = np.nan
    valid, errors = isolate(SIG, a, 500)
    assert not valid.any() and len(errors) == 500 and {e.field for e in errors} == {"x"}
