"""The reference profile of a version's data, and how to build one from arrays or from files of any size.

A profile holds, per feature, what a window of current rows is compared with: quantile bins and
their reference counts for numbers, the most frequent categories plus "other" for everything else,
null counts, ranges and moments; the same for the model's outputs (the prediction distribution);
and, over the numeric inputs, a PCA summary and a standardized sample for multivariate drift.

Conventions shared with ``window``:

* a numeric bin ``i`` is ``(edges[i-1], edges[i]]`` (right-closed, the outer bins open-ended), so a
  value's bin is ``np.searchsorted(edges, x, side="left")``;
* nulls are None, NaN and +-inf (a number that cannot be compared or binned);
* categories are compared as strings (``category_key``): ``3``, ``3.0`` and ``"3"`` are one category.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from shipyard.monitoring.drift._sampling import reservoir_plan
from shipyard.monitoring.drift._values import (
    as_float,
    bin_counts,
    category_counts,
    kind_of,
    quantile_edges,
    reconstruction_error,
)

__all__ = [
    "CategoricalProfile",
    "FeatureProfile",
    "MultivariateProfile",
    "NumericProfile",
    "Profile",
    "ProfileBuilder",
    "feature_columns",
    "output_name",
    "profile_of",
]

MMD_SAMPLE_ROWS = 500
"""Standardized reference rows kept for MMD."""
PCA_VARIANCE = 0.95
"""PCA keeps the fewest components explaining at least this share of the variance."""

_NAN = float("nan")  # one object, so profiles holding NaN (an all-null feature) still compare equal


def feature_columns(arrays: Mapping[str, np.ndarray], *, max_width: int = 100) -> dict[str, np.ndarray]:
    """Split named arrays into one 1-D column per feature.

    A 1-D or ``(n, 1)`` array is one feature named as the array; an ``(n, k)`` array with
    ``k <= max_width`` gives features ``name[0]`` .. ``name[k-1]``; anything else is skipped.

    Args:
        arrays: name -> array, rows first.
        max_width: the widest 2-D array split into features.

    Returns:
        feature name -> 1-D column (a view where NumPy allows).
    """
    columns: dict[str, np.ndarray] = {}
    for name, array in arrays.items():
        a = np.asarray(array)
        if a.ndim == 1:
            columns[name] = a
        elif a.ndim == 2 and a.shape[1] == 1:
            columns[name] = a[:, 0]
        elif a.ndim == 2 and 1 < a.shape[1] <= max_width:
            for j in range(a.shape[1]):
                columns[f"{name}[{j}]"] = a[:, j]
    return columns


# --- the profile -------------------------------------------------------------------------------------


def _f(x: float) -> float | None:
    return None if math.isnan(x) else x


def _unf(x: float | None) -> float:
    return _NAN if x is None else float(x)


@dataclass(frozen=True)
class NumericProfile:
    """A numeric feature's reference: quantile bins and moments."""

    name: str
    edges: tuple[float, ...]
    """Interior cut points, strictly increasing; ``len(edges) + 1`` bins."""
    counts: tuple[int, ...]
    """Reference rows per bin; bin ``i`` is ``(edges[i-1], edges[i]]``."""
    n: int
    """Non-null reference rows."""
    nulls: int
    """Null (None, NaN, +-inf) or unreadable reference rows."""
    min: float
    max: float
    mean: float
    std: float
    """Population standard deviation (ddof 0). NaN for all four when every row is null."""
    kind: ClassVar[str] = "numeric"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "edges": list(self.edges), "counts": list(self.counts),
                "n": self.n, "nulls": self.nulls, "min": _f(self.min), "max": _f(self.max),
                "mean": _f(self.mean), "std": _f(self.std)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> NumericProfile:
        return cls(name=str(d["name"]), edges=tuple(float(e) for e in d["edges"]),
                   counts=tuple(int(c) for c in d["counts"]), n=int(d["n"]), nulls=int(d["nulls"]),
                   min=_unf(d["min"]), max=_unf(d["max"]), mean=_unf(d["mean"]), std=_unf(d["std"]))


@dataclass(frozen=True)
class CategoricalProfile:
    """A categorical feature's reference: its most frequent categories and an "other" bucket."""

    name: str
    categories: tuple[str, ...]
    """The most frequent categories (at most ``max_categories``), most frequent first."""
    counts: tuple[int, ...]
    """Reference rows per category; ``len(categories) + 1``, the last is "other"."""
    n: int
    nulls: int
    kind: ClassVar[str] = "categorical"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "categories": list(self.categories),
                "counts": list(self.counts), "n": self.n, "nulls": self.nulls}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CategoricalProfile:
        return cls(name=str(d["name"]), categories=tuple(str(c) for c in d["categories"]),
                   counts=tuple(int(c) for c in d["counts"]), n=int(d["n"]), nulls=int(d["nulls"]))


FeatureProfile = NumericProfile | CategoricalProfile


def _feature_from_dict(d: Mapping[str, Any]) -> FeatureProfile:
    if d["kind"] == NumericProfile.kind:
        return NumericProfile.from_dict(d)
    if d["kind"] == CategoricalProfile.kind:
        return CategoricalProfile.from_dict(d)
    raise ValueError(f"unknown feature kind {d['kind']!r}")


@dataclass(frozen=True)
class MultivariateProfile:
    """The numeric inputs together: PCA on standardized rows, its error band, and a sample for MMD.

    Rows with a null in any of ``features`` are left out.
    """

    features: tuple[str, ...]
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    """Standard deviation per feature (1 for a constant feature); ``z = (x - mean) / scale``."""
    components: tuple[tuple[float, ...], ...]
    """PCA components kept (rows, unit length): the fewest explaining >= 95% of the variance."""
    error_edges: tuple[float, ...]
    """Quantile cut points of the reference's reconstruction error (mean squared residual of ``z``)."""
    error_counts: tuple[int, ...]
    """Reference rows per error bin, same convention as ``NumericProfile.counts``."""
    sample: tuple[tuple[float, ...], ...]
    """At most 500 standardized reference rows, drawn with the profile's seed."""

    def standardize(self, x: np.ndarray) -> np.ndarray:
        """Rows of ``x`` (n, len(features)) standardized by the reference."""
        z: np.ndarray = (x - np.asarray(self.mean)) / np.asarray(self.scale)
        return z

    def reconstruction_error(self, z: np.ndarray) -> np.ndarray:
        """Per standardized row, the mean squared residual after projecting on the kept components."""
        return reconstruction_error(z, np.asarray(self.components, dtype=np.float64).reshape(-1, len(self.features)))

    def to_dict(self) -> dict[str, Any]:
        return {"features": list(self.features), "mean": list(self.mean), "scale": list(self.scale),
                "components": [list(c) for c in self.components], "error_edges": list(self.error_edges),
                "error_counts": list(self.error_counts), "sample": [list(r) for r in self.sample]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> MultivariateProfile:
        def floats(xs: Iterable[Any]) -> tuple[float, ...]:
            return tuple(float(x) for x in xs)

        return cls(features=tuple(str(f) for f in d["features"]), mean=floats(d["mean"]), scale=floats(d["scale"]),
                   components=tuple(floats(c) for c in d["components"]), error_edges=floats(d["error_edges"]),
                   error_counts=tuple(int(c) for c in d["error_counts"]),
                   sample=tuple(floats(r) for r in d["sample"]))


@dataclass(frozen=True)
class Profile:
    """A version's reference: its input features, its outputs (the prediction distribution), multivariate."""

    inputs: tuple[FeatureProfile, ...]
    outputs: tuple[FeatureProfile, ...]
    multivariate: MultivariateProfile | None
    rows: int

    def feature(self, name: str) -> FeatureProfile:
        """The input or output feature called ``name`` (inputs first).

        Raises:
            KeyError: no such feature.
        """
        for f in self.inputs:
            if f.name == name:
                return f
        for f in self.outputs:
            if f.name == name:
                return f
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (no NaN: None) that ``from_dict`` turns back into an equal profile."""
        return {"rows": self.rows, "inputs": [f.to_dict() for f in self.inputs],
                "outputs": [f.to_dict() for f in self.outputs],
                "multivariate": None if self.multivariate is None else self.multivariate.to_dict()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Profile:
        mv = d.get("multivariate")
        return cls(inputs=tuple(_feature_from_dict(f) for f in d["inputs"]),
                   outputs=tuple(_feature_from_dict(f) for f in d["outputs"]),
                   multivariate=None if mv is None else MultivariateProfile.from_dict(mv), rows=int(d["rows"]))


def output_name(name: str, input_names: Iterable[str]) -> str:
    """The profile's name for output column ``name``: itself, or ``output:name`` when an input has it."""
    return f"output:{name}" if name in input_names else name


# --- building -------------------------------------------------------------------------------------


def _rows(inputs: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray] | None) -> int:
    lengths = {np.shape(a)[0] for a in (*inputs.values(), *(outputs or {}).values()) if np.ndim(a) >= 1}
    if len(lengths) > 1:
        raise ValueError(f"arrays disagree on the number of rows: {sorted(lengths)}")
    return lengths.pop() if lengths else 0


def _chunk_columns(inputs: Mapping[str, np.ndarray],
                   outputs: Mapping[str, np.ndarray] | None) -> dict[tuple[str, str], np.ndarray]:
    """(side, profile name) -> column, outputs renamed where an input has the same name."""
    ins = feature_columns(inputs)
    columns = {("input", name): c for name, c in ins.items()}
    for name, c in feature_columns(outputs or {}).items():
        columns[("output", output_name(name, ins))] = c
    return columns


class _Spec:
    """One feature between the passes: its decided bins or categories and its pass-2 counters."""

    def __init__(self, side: str, name: str, kind: str, edges: np.ndarray, categories: tuple[str, ...]) -> None:
        self.side, self.name, self.kind = side, name, kind
        self.edges = edges
        self.categories = categories
        self.index = {c: i for i, c in enumerate(categories)}
        self.counts = np.zeros((edges.size if kind == "numeric" else len(categories)) + 1, dtype=np.int64)
        self.n = self.nulls = 0
        self.mean = self.m2 = 0.0  # Chan et al.'s parallel update: stable where sum/sumsq is not
        self.min, self.max = math.inf, -math.inf

    def count(self, column: np.ndarray | None, rows: int) -> None:
        if column is None:
            self.nulls += rows
            return
        if self.kind == "numeric":
            values, nulls, failures = as_float(column)
            x = values[~np.isnan(values)] if nulls or failures else values
            self.nulls += nulls + failures
            if x.size:
                self.counts += bin_counts(x, self.edges)
                mean = float(x.mean())
                m2 = float(np.sum((x - mean) ** 2))
                n = self.n + x.size
                delta = mean - self.mean
                self.mean += delta * x.size / n
                self.m2 += m2 + delta * delta * self.n * x.size / n
                self.n = n
                self.min, self.max = min(self.min, float(x.min())), max(self.max, float(x.max()))
            return
        counts, nulls, failures = category_counts(column)
        self.nulls += nulls + failures
        other = len(self.categories)
        for key, c in counts.items():
            self.counts[self.index.get(key, other)] += c
            self.n += c

    def build(self) -> FeatureProfile:
        counts = tuple(int(c) for c in self.counts)
        if self.kind == "categorical":
            return CategoricalProfile(self.name, self.categories, counts, self.n, self.nulls)
        if self.n == 0:
            return NumericProfile(self.name, tuple(self.edges.tolist()), counts, 0, self.nulls, _NAN, _NAN, _NAN, _NAN)
        return NumericProfile(self.name, tuple(self.edges.tolist()), counts, self.n, self.nulls,
                              self.min, self.max, self.mean, math.sqrt(max(self.m2, 0.0) / self.n))


class _MultivariateSpec:
    def __init__(self, features: tuple[str, ...], mean: np.ndarray, scale: np.ndarray, components: np.ndarray,
                 error_edges: np.ndarray, sample: np.ndarray) -> None:
        self.features, self.mean, self.scale = features, mean, scale
        self.components, self.error_edges, self.sample = components, error_edges, sample
        self.counts = np.zeros(error_edges.size + 1, dtype=np.int64)

    def count(self, columns: Mapping[tuple[str, str], np.ndarray]) -> None:
        if not all(("input", f) in columns for f in self.features):
            return
        x = np.column_stack([as_float(columns[("input", f)])[0] for f in self.features])
        x = x[~np.isnan(x).any(axis=1)]
        if x.shape[0]:
            z = (x - self.mean) / self.scale
            self.counts += bin_counts(reconstruction_error(z, self.components), self.error_edges)

    def build(self) -> MultivariateProfile:
        return MultivariateProfile(
            features=self.features, mean=tuple(self.mean.tolist()), scale=tuple(self.scale.tolist()),
            components=tuple(tuple(c) for c in self.components.tolist()),
            error_edges=tuple(self.error_edges.tolist()), error_counts=tuple(int(c) for c in self.counts),
            sample=tuple(tuple(r) for r in self.sample.tolist()))


class ProfileBuilder:
    """Builds a profile from data of any size in bounded memory, in two passes over the same chunks.

    Pass 1 (``sample``) keeps a seeded reservoir of at most ``sample_rows`` rows; from it come each
    feature's kind, quantile edges and category list, and the PCA. Pass 2 (``count``) counts every
    row into those bins. Memory is the reservoir plus O(bins) per feature. With a reservoir that
    holds every row, the result equals ``profile_of`` on the whole data.

    Args:
        bins: at most this many quantile bins per numeric feature.
        max_categories: categories kept per categorical feature; the rest count as "other".
        sample_rows: the reservoir's size.
        seed: seeds the reservoir and the MMD sample.
    """

    def __init__(self, *, bins: int = 50, max_categories: int = 50, sample_rows: int = 100_000,
                 seed: int = 0) -> None:
        if bins < 1 or max_categories < 1 or sample_rows < 1:
            raise ValueError("bins, max_categories and sample_rows must be positive")
        self.bins, self.max_categories, self.sample_rows, self.seed = bins, max_categories, sample_rows, seed
        self._rng = np.random.default_rng(seed)
        self._seen = 0
        self._reservoir: dict[tuple[str, str], np.ndarray] | None = None
        self._specs: list[_Spec] | None = None
        self._multivariate: _MultivariateSpec | None = None
        self._rows = 0

    def sample(self, inputs: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray] | None = None) -> None:
        """Pass 1: offer a chunk's rows to the reservoir.

        Raises:
            ValueError: after ``count`` has started, or a chunk whose features differ from the first's.
        """
        if self._specs is not None:
            raise ValueError("sample() after count(): the first pass is over")
        rows = _rows(inputs, outputs)
        columns = _chunk_columns(inputs, outputs)
        if self._reservoir is None:
            self._reservoir = {k: c[:0].copy() for k, c in columns.items()}
        if columns.keys() != self._reservoir.keys():
            raise ValueError(f"chunk features differ from the first chunk's: {sorted(columns)} vs "
                             f"{sorted(self._reservoir)}")
        fill, src, dst = reservoir_plan(self._seen, rows, self.sample_rows, self._rng)
        for key, column in columns.items():
            held = self._reservoir[key]
            dtype = np.result_type(held, column) if held.size else column.dtype
            if fill:
                held = np.concatenate([held.astype(dtype, copy=False), column[:fill].astype(dtype, copy=False)])
            if src.size:
                held = held.astype(dtype, copy=False)
                held[dst] = column[src]
            self._reservoir[key] = held
        self._seen += rows

    def count(self, inputs: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray] | None = None) -> None:
        """Pass 2: count a chunk's rows into the bins decided by pass 1 (a missing feature counts as nulls)."""
        if self._specs is None:
            self._decide()
        assert self._specs is not None
        rows = _rows(inputs, outputs)
        columns = _chunk_columns(inputs, outputs)
        for spec in self._specs:
            spec.count(columns.get((spec.side, spec.name)), rows)
        if self._multivariate is not None:
            self._multivariate.count(columns)
        self._rows += rows

    def build(self) -> Profile:
        """The profile of every row counted.

        Raises:
            ValueError: nothing was counted (``count`` never called).
        """
        if self._specs is None:
            raise ValueError("build() before count(): run both passes")
        features = [s.build() for s in self._specs]
        return Profile(inputs=tuple(f for s, f in zip(self._specs, features, strict=True) if s.side == "input"),
                       outputs=tuple(f for s, f in zip(self._specs, features, strict=True) if s.side == "output"),
                       multivariate=None if self._multivariate is None else self._multivariate.build(),
                       rows=self._rows)

    def _decide(self) -> None:
        """End pass 1: each feature's kind, edges and categories, and the PCA, from the reservoir."""
        reservoir = self._reservoir or {}
        specs: list[_Spec] = []
        numeric_inputs: list[str] = []
        for (side, name), column in reservoir.items():
            kind = kind_of(column)
            if kind == "numeric":
                values = as_float(column)[0]
                edges = quantile_edges(values[~np.isnan(values)], self.bins)
                specs.append(_Spec(side, name, kind, edges, ()))
                if side == "input":
                    numeric_inputs.append(name)
            elif kind == "categorical":
                counts = category_counts(column)[0]
                top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[: self.max_categories]
                specs.append(_Spec(side, name, kind, np.empty(0), tuple(k for k, _ in top)))
        self._specs = specs
        if len(numeric_inputs) >= 2:
            self._multivariate = self._decide_multivariate(tuple(numeric_inputs), reservoir)
        self._reservoir = None  # pass 2 needs only the decisions

    def _decide_multivariate(self, features: tuple[str, ...],
                             reservoir: Mapping[tuple[str, str], np.ndarray]) -> _MultivariateSpec | None:
        x = np.column_stack([as_float(reservoir[("input", f)])[0] for f in features])
        x = x[~np.isnan(x).any(axis=1)]
        if x.shape[0] < 2:
            return None
        mean = x.mean(axis=0)
        scale = x.std(axis=0)
        scale[~(scale > 0)] = 1.0
        z = (x - mean) / scale
        _, s, vt = np.linalg.svd(z, full_matrices=False)
        variance = s * s
        total = float(variance.sum())
        if total > 0:
            share = np.cumsum(variance) / total
            keep = int(np.searchsorted(share, PCA_VARIANCE - 1e-12, side="left")) + 1
        else:
            keep = 1
        components = vt[: min(keep, vt.shape[0])]
        errors = reconstruction_error(z, components)
        edges = quantile_edges(errors, self.bins)
        rng = np.random.default_rng([self.seed, 1])
        pick = np.sort(rng.choice(z.shape[0], size=min(MMD_SAMPLE_ROWS, z.shape[0]), replace=False))
        return _MultivariateSpec(features, mean, scale, components, edges, z[pick])


def profile_of(inputs: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray] | None = None, *,
               bins: int = 50, max_categories: int = 50, seed: int = 0) -> Profile:
    """The profile of arrays in memory (every row is the sample).

    Args:
        inputs: the model's inputs, name -> array, rows first.
        outputs: its outputs on those inputs (the prediction distribution), if known.
        bins: at most this many quantile bins per numeric feature.
        max_categories: categories kept per categorical feature; the rest count as "other".
        seed: seeds the MMD sample.

    Returns:
        The profile.
    """
    builder = ProfileBuilder(bins=bins, max_categories=max_categories,
                             sample_rows=max(_rows(inputs, outputs), 1), seed=seed)
    builder.sample(inputs, outputs)
    builder.count(inputs, outputs)
    return builder.build()
