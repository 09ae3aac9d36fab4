"""A window of current rows, binned on a profile's edges in bounded memory.

A ``Window`` belongs to one model, version and arm. It keeps, per feature, counts in the profile's
layout (numeric bins, or categories plus "other"), data-quality counters and, for numbers, the
moments; over the numeric inputs, the histogram of PCA reconstruction errors on the profile's
error edges and a seeded reservoir of standardized rows for MMD. Memory is O(bins) per feature
plus the reservoir, whatever the number of rows. Windows of the same profile merge (replicas).

``add`` never raises on bad data: a value that cannot be read as its feature's kind is a type
failure, a feature missing from the arrays given counts its rows as nulls (arrays not given at all,
``outputs=None``, leave their features alone), features the profile does not know are ignored.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from shipyard.monitoring.drift._sampling import merge_plan, reservoir_plan
from shipyard.monitoring.drift._values import (
    SERVING_PRODUCT_CELLS,
    as_float,
    category_counts,
    reconstruction_error,
)
from shipyard.monitoring.drift.profile import (
    CategoricalProfile,
    MultivariateProfile,
    NumericProfile,
    Profile,
    feature_columns,
)

__all__ = ["FeatureQuality", "Moments", "MultivariateWindow", "Window"]

Arrays = Mapping[str, np.ndarray]

_FEW = 8
"""Up to this many rows, a numeric column is counted in plain Python (same results, less overhead)."""


@dataclass(frozen=True)
class FeatureQuality:
    """A feature's data-quality counters over a window."""

    n: int
    """Rows seen (nulls and failures included)."""
    nulls: int
    """None, NaN or +-inf, or the feature missing from the request."""
    below_min: int
    """Numeric values below the reference's minimum."""
    above_max: int
    """Numeric values above the reference's maximum."""
    unseen: int
    """Categories not in the reference's list (also counted in "other")."""
    type_failures: int
    """Values not readable as the feature's kind (a string in a numeric feature, a list in a categorical one)."""

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True)
class Moments:
    """A numeric feature's finite values over a window: enough for its mean and standard deviation."""

    n: int
    sum: float
    sumsq: float
    min: float
    """NaN when ``n`` is 0 (as are ``max``, ``mean`` and ``std``)."""
    max: float

    @property
    def mean(self) -> float:
        return self.sum / self.n if self.n else math.nan

    @property
    def std(self) -> float:
        """Population standard deviation (ddof 0)."""
        if not self.n:
            return math.nan
        mean = self.sum / self.n
        return math.sqrt(max(self.sumsq / self.n - mean * mean, 0.0))


def _none_if_empty(x: float) -> float | None:
    return None if math.isinf(x) or math.isnan(x) else x


class _Numeric:
    def __init__(self, profile: NumericProfile) -> None:
        self.profile = profile
        self.edges = np.asarray(profile.edges, dtype=np.float64)
        self.edge_list = list(profile.edges)
        self.lo, self.hi = profile.min, profile.max
        self.counts = np.zeros(self.edges.size + 1, dtype=np.int64)
        self.n = self.nulls = self.below_min = self.above_max = self.type_failures = 0
        self.values_n = 0
        self.sum = self.sumsq = 0.0
        self.min, self.max = math.inf, -math.inf

    def add(self, column: np.ndarray | None, rows: int) -> np.ndarray | None:
        """Count a column; return its values as float64 (NaN where null or unreadable) for the multivariate part."""
        if column is None:
            self.n += rows
            self.nulls += rows
            return None
        if column.shape[0] <= _FEW and column.dtype.kind in "fiub":
            return self._add_few(column)
        values, nulls, failures = as_float(column)
        self.n += values.shape[0]
        self.nulls += nulls
        self.type_failures += failures
        x = values[~np.isnan(values)] if nulls or failures else values
        if x.size:
            self.counts += np.bincount(np.searchsorted(self.edges, x, side="left"), minlength=self.counts.size)
            self.below_min += int(np.count_nonzero(x < self.lo))
            self.above_max += int(np.count_nonzero(x > self.hi))
            self.values_n += x.size
            self.sum += float(x.sum())
            self.sumsq += float(np.einsum("i,i->", x, x))  # not np.dot: BLAS would wake its spinning threads
            self.min = min(self.min, float(x.min()))
            self.max = max(self.max, float(x.max()))
        return values

    def _add_few(self, column: np.ndarray) -> np.ndarray:
        """``add`` for a few rows of numbers: plain Python beats NumPy's per-call overhead (one-row events)."""
        values = column.astype(np.float64, copy=False)
        self.n += values.shape[0]
        nulls = 0
        for v in values.tolist():
            if not math.isfinite(v):
                nulls += 1
                continue
            self.counts[bisect_left(self.edge_list, v)] += 1  # == searchsorted(side="left")
            if v < self.lo:
                self.below_min += 1
            elif v > self.hi:
                self.above_max += 1
            self.values_n += 1
            self.sum += v
            self.sumsq += v * v
            if v < self.min:
                self.min = v
            if v > self.max:
                self.max = v
        if nulls:
            self.nulls += nulls
            values = np.where(np.isfinite(values), values, np.nan)
        return values

    def quality(self) -> FeatureQuality:
        return FeatureQuality(self.n, self.nulls, self.below_min, self.above_max, 0, self.type_failures)

    def moments(self) -> Moments:
        if not self.values_n:
            return Moments(0, 0.0, 0.0, math.nan, math.nan)
        return Moments(self.values_n, self.sum, self.sumsq, self.min, self.max)

    def merged(self, other: _Numeric) -> _Numeric:
        out = _Numeric(self.profile)
        out.counts = self.counts + other.counts
        for attr in ("n", "nulls", "below_min", "above_max", "type_failures", "values_n", "sum", "sumsq"):
            setattr(out, attr, getattr(self, attr) + getattr(other, attr))
        out.min, out.max = min(self.min, other.min), max(self.max, other.max)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"counts": self.counts.tolist(), "n": self.n, "nulls": self.nulls, "below_min": self.below_min,
                "above_max": self.above_max, "type_failures": self.type_failures, "values_n": self.values_n,
                "sum": self.sum, "sumsq": self.sumsq, "min": _none_if_empty(self.min),
                "max": _none_if_empty(self.max)}

    def load(self, d: Mapping[str, Any]) -> None:
        self.counts = _counts(d["counts"], self.counts.size, self.profile.name)
        self.n, self.nulls = int(d["n"]), int(d["nulls"])
        self.below_min, self.above_max = int(d["below_min"]), int(d["above_max"])
        self.type_failures, self.values_n = int(d["type_failures"]), int(d["values_n"])
        self.sum, self.sumsq = float(d["sum"]), float(d["sumsq"])
        self.min = math.inf if d["min"] is None else float(d["min"])
        self.max = -math.inf if d["max"] is None else float(d["max"])


class _Categorical:
    def __init__(self, profile: CategoricalProfile) -> None:
        self.profile = profile
        self.index = {c: i for i, c in enumerate(profile.categories)}  # built once: the hot path is a dict lookup
        self.other = len(profile.categories)
        self.counts = np.zeros(self.other + 1, dtype=np.int64)
        self.n = self.nulls = self.unseen = self.type_failures = 0

    def add(self, column: np.ndarray | None, rows: int) -> None:
        if column is None:
            self.n += rows
            self.nulls += rows
            return
        counts, nulls, failures = category_counts(column)
        self.n += column.shape[0]
        self.nulls += nulls
        self.type_failures += failures
        for key, c in counts.items():
            i = self.index.get(key)
            if i is None:
                self.counts[self.other] += c
                self.unseen += c
            else:
                self.counts[i] += c

    def quality(self) -> FeatureQuality:
        return FeatureQuality(self.n, self.nulls, 0, 0, self.unseen, self.type_failures)

    def merged(self, other: _Categorical) -> _Categorical:
        out = _Categorical(self.profile)
        out.counts = self.counts + other.counts
        out.n, out.nulls = self.n + other.n, self.nulls + other.nulls
        out.unseen, out.type_failures = self.unseen + other.unseen, self.type_failures + other.type_failures
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"counts": self.counts.tolist(), "n": self.n, "nulls": self.nulls, "unseen": self.unseen,
                "type_failures": self.type_failures}

    def load(self, d: Mapping[str, Any]) -> None:
        self.counts = _counts(d["counts"], self.counts.size, self.profile.name)
        self.n, self.nulls = int(d["n"]), int(d["nulls"])
        self.unseen, self.type_failures = int(d["unseen"]), int(d["type_failures"])


def _counts(values: Iterable[Any], size: int, name: str) -> np.ndarray:
    counts = np.asarray([int(v) for v in values], dtype=np.int64)
    if counts.size != size:
        raise ValueError(f"feature {name!r}: {counts.size} counts, the profile has {size} bins")
    return counts


class MultivariateWindow:
    """The numeric inputs together over a window: reconstruction errors and a sample of standardized rows.

    Only rows with every multivariate feature present count (``rows``).
    """

    def __init__(self, profile: MultivariateProfile, capacity: int) -> None:
        self.profile = profile
        self.capacity = capacity
        self.error_edges = np.asarray(profile.error_edges, dtype=np.float64)
        self.error_counts = np.zeros(self.error_edges.size + 1, dtype=np.int64)
        """Rows per reconstruction-error bin, in the layout of the profile's ``error_counts``."""
        self.rows = 0
        """Complete rows seen (offered to the reservoir)."""
        self._mean = np.asarray(profile.mean, dtype=np.float64)
        self._scale = np.asarray(profile.scale, dtype=np.float64)
        self._components = np.asarray(profile.components, dtype=np.float64).reshape(-1, len(profile.features))
        self._buffer = np.empty((capacity, len(profile.features)), dtype=np.float64)
        self._held = 0

    @property
    def sample(self) -> np.ndarray:
        """The reservoir: at most ``capacity`` standardized rows, each row seen with an equal chance."""
        return self._buffer[: self._held]

    def add(self, x: np.ndarray, rng: np.random.Generator) -> None:
        """Add raw rows ``x`` (n, features), NaN where a value is missing: incomplete rows are skipped."""
        missing = np.isnan(x).any(axis=1)
        if missing.any():
            x = x[~missing]
        if not x.shape[0]:
            return
        z = (x - self._mean) / self._scale
        errors = reconstruction_error(z, self._components, max_cells=SERVING_PRODUCT_CELLS)
        self.error_counts += np.bincount(np.searchsorted(self.error_edges, errors, side="left"),
                                         minlength=self.error_counts.size)
        fill, src, dst = reservoir_plan(self.rows, z.shape[0], self.capacity, rng)
        if fill:
            self._buffer[self._held: self._held + fill] = z[:fill]
            self._held += fill
        if src.size:
            self._buffer[dst] = z[src]
        self.rows += z.shape[0]

    def merged(self, other: MultivariateWindow, rng: np.random.Generator) -> MultivariateWindow:
        out = MultivariateWindow(self.profile, self.capacity)
        out.error_counts = self.error_counts + other.error_counts
        out.rows = self.rows + other.rows
        from_a, from_b = merge_plan(self.rows, self._held, other.rows, other._held, self.capacity, rng)
        rows = np.concatenate([self.sample[from_a], other.sample[from_b]])
        out._buffer[: rows.shape[0]] = rows
        out._held = rows.shape[0]
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"error_counts": self.error_counts.tolist(), "rows": self.rows, "sample": self.sample.tolist()}

    def load(self, d: Mapping[str, Any]) -> None:
        self.error_counts = _counts(d["error_counts"], self.error_counts.size, "multivariate")
        self.rows = int(d["rows"])
        sample = np.asarray(d["sample"], dtype=np.float64).reshape(-1, self._buffer.shape[1])
        if sample.shape[0] > self.capacity:
            raise ValueError(f"multivariate sample of {sample.shape[0]} rows, capacity {self.capacity}")
        self._buffer[: sample.shape[0]] = sample
        self._held = sample.shape[0]


def _rows_of(arrays: Arrays | None) -> int | None:
    for a in (arrays or {}).values():
        if np.ndim(a) >= 1:
            return int(np.shape(a)[0])
    return None


def _rng_state(rng: np.random.Generator) -> dict[str, Any]:
    state = rng.bit_generator.state
    # big integers as strings: the dict may go through JSON parsers that keep only 53-bit numbers
    return {"bit_generator": state["bit_generator"], "state": {k: str(v) for k, v in state["state"].items()},
            "has_uint32": int(state["has_uint32"]), "uinteger": int(state["uinteger"])}


def _rng_from(d: Mapping[str, Any]) -> np.random.Generator:
    rng = np.random.default_rng()
    if d["bit_generator"] != rng.bit_generator.state["bit_generator"]:
        raise ValueError(f"unknown bit generator {d['bit_generator']!r}")
    rng.bit_generator.state = {"bit_generator": d["bit_generator"],
                               "state": {k: int(v) for k, v in d["state"].items()},
                               "has_uint32": int(d["has_uint32"]), "uinteger": int(d["uinteger"])}
    return rng


class Window:
    """One model/version/arm's rows since the window started, in O(bins) memory per feature.

    Not thread-safe: one thread adds (the observers' thread); hand a finished window to others.

    Args:
        profile: the reference whose bins and categories the rows are counted in.
        sample_rows: the multivariate reservoir's size (standardized rows kept for MMD).
        seed: seeds the reservoir.
    """

    def __init__(self, profile: Profile, *, sample_rows: int = 500, seed: int = 0) -> None:
        if sample_rows < 1:
            raise ValueError("sample_rows must be positive")
        self.profile = profile
        self.sample_rows = sample_rows
        self.seed = seed
        self.rows = 0
        """Rows added (a request's rows, whatever was missing in them)."""
        self._rng = np.random.default_rng(seed)
        self._states: dict[str, _Numeric | _Categorical] = {}
        input_names = {f.name for f in profile.inputs}
        # (column name as feature_columns gives it, state): outputs renamed "output:x" by the profile read "x"
        self._inputs: list[tuple[str, _Numeric | _Categorical]] = []
        self._outputs: list[tuple[str, _Numeric | _Categorical]] = []
        for side, features in ((self._inputs, profile.inputs), (self._outputs, profile.outputs)):
            for f in features:
                state: _Numeric | _Categorical = _Numeric(f) if isinstance(f, NumericProfile) else _Categorical(f)
                self._states[f.name] = state
                column = f.name
                if side is self._outputs and column.startswith("output:") and column[7:] in input_names:
                    column = column[7:]
                side.append((column, state))
        mv = profile.multivariate
        self._multivariate = None if mv is None else MultivariateWindow(mv, sample_rows)
        self._mv_features = frozenset(mv.features) if mv is not None else frozenset()
        # the usual model takes one (n, k) matrix whose columns are the multivariate features: read it whole
        self._mv_array: str | None = None
        if mv is not None:
            base = mv.features[0].partition("[")[0]
            if mv.features == tuple(f"{base}[{j}]" for j in range(len(mv.features))):
                self._mv_array = base

    @property
    def multivariate(self) -> MultivariateWindow | None:
        """The multivariate part (None when the profile has none)."""
        return self._multivariate

    @property
    def names(self) -> tuple[str, ...]:
        """The window's features: the profile's inputs, then its outputs."""
        return tuple(self._states)

    def add(self, inputs: Arrays | None, outputs: Arrays | None = None) -> None:
        """Count a batch of rows (inputs and the outputs returned for them), vectorized per feature.

        Args:
            inputs: name -> array, rows first. A profile feature missing from it counts its rows as
                nulls; None means the inputs were not observed, and their features are left as they are.
            outputs: the outputs returned for those rows, the same way (None: not observed).
        """
        rows = _rows_of(inputs)
        if rows is None:
            rows = _rows_of(outputs)
        if rows is None:
            return
        if inputs is not None:
            columns = feature_columns(inputs)
            mv_values: dict[str, np.ndarray | None] = {}
            for name, state in self._inputs:
                if isinstance(state, _Numeric):
                    values = state.add(columns.get(name), rows)
                    if name in self._mv_features:
                        mv_values[name] = values
                else:
                    state.add(columns.get(name), rows)
            if self._multivariate is not None:
                self._add_multivariate(inputs, mv_values, rows)
        if outputs is not None and self._outputs:
            out_columns = feature_columns(outputs)
            for name, state in self._outputs:
                state.add(out_columns.get(name), rows)
        self.rows += rows

    def _add_multivariate(self, inputs: Arrays, values: Mapping[str, np.ndarray | None], rows: int) -> None:
        assert self._multivariate is not None
        features = self._multivariate.profile.features
        matrix = None if self._mv_array is None else inputs.get(self._mv_array)
        if isinstance(matrix, np.ndarray) and matrix.shape == (rows, len(features)) and matrix.dtype.kind in "fiub":
            x = matrix.astype(np.float64)
            finite = np.isfinite(x)
            if not finite.all():
                x[~finite] = np.nan
        else:
            stacked = [v for v in (values.get(f) for f in features) if v is not None and v.shape[0] == rows]
            if len(stacked) != len(features):
                return
            x = np.column_stack(stacked)
        self._multivariate.add(x, self._rng)

    def add_many(self, batches: Iterable[tuple[Arrays | None, Arrays | None]]) -> None:
        """Add many ``(inputs, outputs)`` batches: concatenated and counted once when their arrays agree.

        Cheaper than one ``add`` per batch for many small batches (one row per prediction event).
        Batches whose arrays do not line up (names, widths, dtypes that cannot join) are added one by one.
        """
        batches = [(i, o) for i, o in batches if i is not None or o is not None]
        if not batches:
            return
        if len(batches) == 1:
            self.add(*batches[0])
            return
        ok_in, inputs = _join([b[0] for b in batches])
        ok_out, outputs = _join([b[1] for b in batches])
        if ok_in and ok_out:
            self.add(inputs, outputs)
        else:
            for batch in batches:
                self.add(*batch)

    def counts(self, name: str) -> np.ndarray:
        """A feature's counts, in the layout of its profile's ``counts`` (a copy)."""
        return self._state(name).counts.copy()

    def quality(self, name: str) -> FeatureQuality:
        """A feature's data-quality counters."""
        return self._state(name).quality()

    def moments(self, name: str) -> Moments:
        """A numeric feature's moments over its finite values.

        Raises:
            KeyError: no such feature.
            TypeError: the feature is categorical.
        """
        state = self._state(name)
        if not isinstance(state, _Numeric):
            raise TypeError(f"feature {name!r} is categorical: no moments")
        return state.moments()

    def merge(self, other: Window) -> Window:
        """A window holding both windows' rows (two replicas of the same profile); neither is changed.

        Counts add up; the reservoirs merge so every row of either has an equal chance to be kept.

        Raises:
            ValueError: the windows have different profiles or reservoir sizes.
        """
        if other.profile is not self.profile and other.profile != self.profile:
            raise ValueError("cannot merge windows of different profiles")
        if other.sample_rows != self.sample_rows:
            raise ValueError(f"cannot merge reservoirs of {self.sample_rows} and {other.sample_rows} rows")
        out = Window(self.profile, sample_rows=self.sample_rows, seed=self.seed)
        rng = _rng_from(_rng_state(self._rng))  # a copy: merging leaves self as it was
        out._rng = rng
        out.rows = self.rows + other.rows
        for name, state in self._states.items():
            theirs = other._states[name]
            if isinstance(state, _Numeric):
                assert isinstance(theirs, _Numeric)  # same profile: same kind per name
                out._states[name] = state.merged(theirs)
            else:
                assert isinstance(theirs, _Categorical)
                out._states[name] = state.merged(theirs)
        out._inputs = [(column, out._states[s.profile.name]) for column, s in self._inputs]
        out._outputs = [(column, out._states[s.profile.name]) for column, s in self._outputs]
        if self._multivariate is not None and other._multivariate is not None:
            out._multivariate = self._multivariate.merged(other._multivariate, rng)
        return out

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (no NaN) that ``Window.from_dict(profile, d)`` restores, reservoir generator included."""
        return {"rows": self.rows, "sample_rows": self.sample_rows, "seed": self.seed,
                "features": {name: state.to_dict() for name, state in self._states.items()},
                "multivariate": None if self._multivariate is None else self._multivariate.to_dict(),
                "rng": _rng_state(self._rng)}

    @classmethod
    def from_dict(cls, profile: Profile, d: Mapping[str, Any]) -> Window:
        """The window ``to_dict`` described, over ``profile``.

        Raises:
            ValueError: the dict does not fit the profile (other features or bins).
        """
        window = cls(profile, sample_rows=int(d["sample_rows"]), seed=int(d["seed"]))
        features = d["features"]
        if set(features) != set(window._states):
            raise ValueError(f"window features {sorted(features)} differ from the profile's {sorted(window._states)}")
        for name, state in window._states.items():
            state.load(features[name])
        mv = d.get("multivariate")
        if (mv is None) != (window._multivariate is None):
            raise ValueError("window and profile disagree on the multivariate part")
        if mv is not None and window._multivariate is not None:
            window._multivariate.load(mv)
        window.rows = int(d["rows"])
        window._rng = _rng_from(d["rng"])
        return window

    def _state(self, name: str) -> _Numeric | _Categorical:
        try:
            return self._states[name]
        except KeyError:
            raise KeyError(f"no feature {name!r} in the window") from None


def _join(arrays: list[Arrays | None]) -> tuple[bool, dict[str, np.ndarray] | None]:
    """``(joined, arrays)``: the batches' arrays concatenated by name (None when no batch has any),
    or ``(False, None)`` when they cannot join (some batches without them, other names, other widths)."""
    present = [a for a in arrays if a is not None]
    if not present:
        return True, None
    if len(present) != len(arrays):
        return False, None
    names = present[0].keys()
    if any(a.keys() != names for a in present[1:]):
        return False, None
    columns: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for a in present:  # one pass over the batches (not one per name): this runs once per prediction
        for name, value in a.items():
            columns[name].append(value)
    try:
        return True, {name: np.concatenate(values) for name, values in columns.items()}
    except ValueError:  # widths differ, or a 0-d array
        return False, None
