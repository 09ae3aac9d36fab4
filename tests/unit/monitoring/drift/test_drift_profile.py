"""The reference profile: feature columns, kinds, bins, round trip, the two-pass builder, multivariate."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from shipyard.monitoring.drift._sampling import merge_plan, reservoir_plan
from shipyard.monitoring.drift.profile import (
    CategoricalProfile,
    NumericProfile,
    Profile,
    ProfileBuilder,
    feature_columns,
    profile_of,
)


def _data(n: int, seed: int = 0) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3)) * [1.0, 5.0, 0.1] + [0.0, 100.0, -3.0]
    inputs = {
        "x": x,
        "age": rng.integers(18, 90, size=n),                       # > 20 distinct ints: numeric
        "grade": rng.integers(1, 6, size=n),                       # few distinct ints: categorical
        "city": np.array(["paris", "lima", "oslo", "kyiv"])[rng.integers(0, 4, size=n)],
        "member": rng.random(n) < 0.3,
    }
    outputs = {"score": x[:, 0] * 2 + rng.normal(size=n) * 0.1}
    return inputs, outputs


def test_feature_columns_split_arrays_by_shape() -> None:
    n = 4
    columns = feature_columns({
        "a": np.arange(n), "b": np.arange(n).reshape(n, 1), "c": np.zeros((n, 3)),
        "s": np.array(["x", "y", "z", "w"]), "cube": np.zeros((n, 2, 2)), "wide": np.zeros((n, 5)),
        "scalar": np.array(1.0),
    }, max_width=4)
    assert list(columns) == ["a", "b", "c[0]", "c[1]", "c[2]", "s"]
    assert all(c.ndim == 1 and c.shape[0] == n for c in columns.values())
    assert columns["s"].tolist() == ["x", "y", "z", "w"]


def test_kinds_follow_dtype_and_distinct_ints() -> None:
    inputs, outputs = _data(2000)
    profile = profile_of(inputs, outputs)
    kinds = {f.name: f.kind for f in (*profile.inputs, *profile.outputs)}
    assert kinds == {"x[0]": "numeric", "x[1]": "numeric", "x[2]": "numeric", "age": "numeric",
                     "grade": "categorical", "city": "categorical", "member": "categorical", "score": "numeric"}
    grade = profile.feature("grade")
    assert isinstance(grade, CategoricalProfile)
    assert sorted(grade.categories) == ["1", "2", "3", "4", "5"]
    assert profile.feature("member").categories == ("False", "True")  # type: ignore[union-attr]
    assert profile.rows == 2000


def test_numeric_profile_bins_are_reference_quantiles() -> None:
    inputs, outputs = _data(5000)
    profile = profile_of(inputs, outputs, bins=10)
    f = profile.feature("x[1]")
    assert isinstance(f, NumericProfile)
    x = inputs["x"][:, 1]
    assert len(f.edges) == 9 and all(a < b for a, b in zip(f.edges, f.edges[1:], strict=False))
    assert f.edges == tuple(np.quantile(x, np.linspace(0, 1, 11)[1:-1], method="inverted_cdf").tolist())
    assert set(f.edges) <= set(x.tolist())  # cuts are reference values: no empty reference bin
    assert sum(f.counts) == f.n == 5000 and max(f.counts) - min(f.counts) <= 2
    assert f.min == x.min() and f.max == x.max()
    assert math.isclose(f.mean, x.mean(), rel_tol=1e-12) and math.isclose(f.std, x.std(), rel_tol=1e-9)


def test_few_distinct_values_give_fewer_bins() -> None:
    x = np.repeat([0.5, 1.5, 2.5], [100, 300, 600])
    f = profile_of({"x": x}).feature("x")
    assert isinstance(f, NumericProfile)
    assert f.edges == (0.5, 1.5)  # the maximum is no cut: every reference bin holds rows
    assert f.counts == (100, 300, 600)


def test_categorical_keeps_most_frequent_and_other() -> None:
    values = np.array(["a"] * 50 + ["b"] * 30 + ["c"] * 15 + ["d"] * 5, dtype=object)
    values[0] = None
    f = profile_of({"c": values}, max_categories=2).feature("c")
    assert isinstance(f, CategoricalProfile)
    assert f.categories == ("a", "b") and f.counts == (49, 30, 20) and f.nulls == 1 and f.n == 99


def test_profile_round_trips_through_json_exactly() -> None:
    inputs, outputs = _data(1000)
    inputs["empty"] = np.full(1000, np.nan)  # every row null: NaN statistics, None in JSON
    inputs["mixed"] = np.array([None, 3, 3.0, "3", b"x"] * 200, dtype=object)
    profile = profile_of(inputs, outputs, bins=20)
    text = json.dumps(profile.to_dict(), allow_nan=False)
    again = Profile.from_dict(json.loads(text))
    assert again == profile
    assert json.dumps(again.to_dict(), allow_nan=False) == text
    mixed = profile.feature("mixed")
    assert isinstance(mixed, CategoricalProfile)
    assert dict(zip(mixed.categories, mixed.counts, strict=False)) == {"3": 600, "x": 200}


def test_builder_over_chunks_equals_profile_of_when_the_sample_holds_every_row() -> None:
    inputs, outputs = _data(3000, seed=4)
    whole = profile_of(inputs, outputs, bins=25, seed=7)
    builder = ProfileBuilder(bins=25, sample_rows=10_000, seed=7)
    chunks = [slice(k, k + 700) for k in range(0, 3000, 700)]
    for s in chunks:
        builder.sample({k: v[s] for k, v in inputs.items()}, {k: v[s] for k, v in outputs.items()})
    for s in chunks:
        builder.count({k: v[s] for k, v in inputs.items()}, {k: v[s] for k, v in outputs.items()})
    built = builder.build()
    assert built.rows == whole.rows and built.multivariate == whole.multivariate
    for a, b in zip((*built.inputs, *built.outputs), (*whole.inputs, *whole.outputs), strict=True):
        if isinstance(a, NumericProfile):
            assert isinstance(b, NumericProfile)
            assert (a.edges, a.counts, a.n, a.nulls, a.min, a.max) == (b.edges, b.counts, b.n, b.nulls, b.min, b.max)
            assert math.isclose(a.mean, b.mean, rel_tol=1e-9, abs_tol=1e-12)
            assert math.isclose(a.std, b.std, rel_tol=1e-9)
        else:
            assert a == b


def test_builder_with_a_small_sample_still_counts_every_row() -> None:
    inputs, outputs = _data(5000, seed=2)
    builder = ProfileBuilder(bins=10, sample_rows=300, seed=1)
    for k in range(0, 5000, 1000):
        builder.sample({n: v[k:k + 1000] for n, v in inputs.items()})
    for k in range(0, 5000, 1000):
        builder.count({n: v[k:k + 1000] for n, v in inputs.items()})
    profile = builder.build()
    assert profile.rows == 5000
    assert all(sum(f.counts) + f.nulls == 5000 for f in profile.inputs)
    f = profile.feature("x[0]")
    assert isinstance(f, NumericProfile) and 5 <= len(f.edges) <= 9
    assert abs(max(f.counts) / 5000 - 0.1) < 0.05  # sample quantiles: near-equal bins on all rows


def test_builder_refuses_out_of_order_passes_and_other_features() -> None:
    builder = ProfileBuilder()
    with pytest.raises(ValueError, match="before count"):
        builder.build()
    builder.sample({"a": np.arange(3.0)})
    with pytest.raises(ValueError, match="differ"):
        builder.sample({"b": np.arange(3.0)})
    builder.count({"a": np.arange(3.0)})
    with pytest.raises(ValueError, match="first pass is over"):
        builder.sample({"a": np.arange(3.0)})


def test_output_named_like_an_input_is_prefixed() -> None:
    profile = profile_of({"y": np.arange(100.0), "z": np.arange(100.0)}, {"y": np.arange(100.0) * 2})
    assert [f.name for f in profile.outputs] == ["output:y"]
    assert profile.feature("y") is profile.inputs[0]


def test_pca_reconstruction_error_is_near_zero_in_the_reference_span() -> None:
    rng = np.random.default_rng(3)
    basis = rng.normal(size=(2, 5))
    x = rng.normal(size=(2000, 2)) @ basis + 10.0
    profile = profile_of({"x": x})
    mv = profile.multivariate
    assert mv is not None and len(mv.components) == 2 and len(mv.sample) == 500
    fresh = rng.normal(size=(300, 2)) @ basis + 10.0
    assert mv.reconstruction_error(mv.standardize(fresh)).max() < 1e-20
    off = fresh + rng.normal(size=fresh.shape)
    assert mv.reconstruction_error(mv.standardize(off)).min() > 1e-6
    assert sum(mv.error_counts) == 2000


def test_multivariate_needs_two_numeric_inputs() -> None:
    rng = np.random.default_rng(0)
    one = profile_of({"a": rng.normal(size=100), "c": np.array(["u", "v"] * 50)}, {"y": rng.normal(size=100)})
    assert one.multivariate is None
    two = profile_of({"a": rng.normal(size=100), "b": rng.normal(size=100)})
    assert two.multivariate is not None and two.multivariate.features == ("a", "b")


def test_reservoir_plan_keeps_each_row_with_equal_chance() -> None:
    rng = np.random.default_rng(0)
    capacity, total, trials = 20, 200, 2000
    hits = np.zeros(total)
    for _ in range(trials):
        slots = np.full(capacity, -1)
        seen = 0
        for size in (7, 50, 1, 142):  # uneven batches, the first partly filling
            fill, src, dst = reservoir_plan(seen, size, capacity, rng)
            slots[seen:seen + fill] = np.arange(seen, seen + fill)
            slots[dst] = seen + src
            seen += size
        assert len(set(slots.tolist())) == capacity
        hits[slots] += 1
    assert np.allclose(hits / trials, capacity / total, atol=0.035)


def test_merge_plan_takes_rows_in_proportion_to_rows_seen() -> None:
    rng = np.random.default_rng(1)
    taken = [merge_plan(1000, 100, 3000, 100, 100, rng) for _ in range(500)]
    assert all(a.size + b.size == 100 for a, b in taken)
    assert abs(np.mean([a.size for a, _ in taken]) - 25) < 1


def test_builder_reservoir_widens_dtypes_across_chunks() -> None:
    builder = ProfileBuilder(sample_rows=4, seed=0)
    builder.sample({"s": np.array(["ab", "cd", "ef"]), "v": np.arange(3)})
    builder.sample({"s": np.array(["a-much-longer-one"] * 5), "v": np.linspace(0.5, 99.5, 5)})
    for s, v in ((np.array(["ab"]), np.array([1])), (np.array(["zz"]), np.array([2.5]))):
        builder.count({"s": s, "v": v})
    profile = builder.build()
    assert profile.rows == 2 and profile.feature("v").kind == "numeric"
    assert all(len(c) in (2, 17) for c in profile.feature("s").categories)  # type: ignore[union-attr]


def test_exported_members() -> None:
    from shipyard.monitoring.drift import profile, window

    assert sorted(profile.__all__) == ["CategoricalProfile", "FeatureProfile", "MultivariateProfile",
                                       "NumericProfile", "Profile", "ProfileBuilder", "feature_columns",
                                       "output_name", "profile_of"]
    assert sorted(window.__all__) == ["FeatureQuality", "Moments", "MultivariateWindow", "Window"]
