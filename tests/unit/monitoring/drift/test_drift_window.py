"""A window of current rows: counts on the profile's bins, quality, moments, multivariate, merge, state."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from shipyard.monitoring.drift.profile import NumericProfile, Profile, profile_of
from shipyard.monitoring.drift.window import Window


def _reference(n: int = 2000, seed: int = 0) -> tuple[Profile, dict[str, np.ndarray], dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    inputs = {"x": rng.normal(size=(n, 3)), "city": np.array(["paris", "lima", "oslo"])[rng.integers(0, 3, n)]}
    outputs = {"y": inputs["x"][:, 0] + 0.1 * rng.normal(size=n)}
    return profile_of(inputs, outputs, bins=20), inputs, outputs


def _current(n: int, seed: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    inputs = {"x": rng.normal(0.3, 1.2, size=(n, 3)),
              "city": np.array(["paris", "lima", "oslo", "rome"])[rng.integers(0, 4, n)]}
    return inputs, {"y": rng.normal(size=n)}


def _right_closed_histogram(x: np.ndarray, edges: tuple[float, ...]) -> np.ndarray:
    # np.histogram bins are [a, b); on -x they are the profile's (a, b] bins, mirrored
    mirrored = np.concatenate([[-np.inf], -np.asarray(edges)[::-1], [np.inf]])
    counts, _ = np.histogram(-x, bins=mirrored)
    return counts[::-1]


def test_numeric_counts_equal_histogram_counts_on_the_profile_edges() -> None:
    profile, _, _ = _reference()
    inputs, outputs = _current(5000, seed=1)
    inputs["x"][:50, 1] = np.asarray(profile.feature("x[1]").edges[:5]).repeat(10)  # values exactly on edges
    window = Window(profile)
    for k in range(0, 5000, 1250):
        window.add({n: v[k:k + 1250] for n, v in inputs.items()}, {n: v[k:k + 1250] for n, v in outputs.items()})
    for j in range(3):
        f = profile.feature(f"x[{j}]")
        assert isinstance(f, NumericProfile)
        assert window.counts(f"x[{j}]").tolist() == _right_closed_histogram(inputs["x"][:, j], f.edges).tolist()
    y = profile.feature("y")
    assert isinstance(y, NumericProfile)
    assert window.counts("y").tolist() == _right_closed_histogram(outputs["y"], y.edges).tolist()
    assert window.rows == 5000


def test_window_of_the_reference_reproduces_the_profile_counts() -> None:
    profile, inputs, outputs = _reference()
    window = Window(profile)
    window.add(inputs, outputs)
    for f in (*profile.inputs, *profile.outputs):
        assert tuple(window.counts(f.name).tolist()) == f.counts
    assert window.multivariate is not None and profile.multivariate is not None
    assert tuple(window.multivariate.error_counts.tolist()) == profile.multivariate.error_counts


def test_categorical_counts_and_unseen_categories() -> None:
    profile, _, _ = _reference()
    window = Window(profile)
    window.add({"city": np.array(["paris", "rome", "paris", "lima", "rome", "tokyo"])})
    categories = profile.feature("city").categories  # type: ignore[union-attr]
    counts = dict(zip((*categories, "other"), window.counts("city").tolist(), strict=True))
    assert counts == {"paris": 2, "lima": 1, "oslo": 0, "other": 3}
    quality = window.quality("city")
    assert (quality.n, quality.unseen, quality.nulls, quality.type_failures) == (6, 3, 0, 0)


def test_quality_counts_nulls_range_and_type_failures() -> None:
    profile, _, _ = _reference()
    window = Window(profile)
    f = profile.feature("x[0]")
    assert isinstance(f, NumericProfile)
    x = np.zeros((6, 3))
    x[:, 0] = [np.nan, np.inf, f.min - 1, f.max + 1, 0.0, 0.0]
    window.add({"x": x, "city": np.array([None, "paris", [1], "lima", "paris", "oslo"], dtype=object)})
    q = window.quality("x[0]")
    assert (q.n, q.nulls, q.below_min, q.above_max, q.type_failures) == (6, 2, 1, 1, 0)
    assert window.counts("x[0]").sum() == 4
    c = window.quality("city")
    assert (c.n, c.nulls, c.type_failures, c.unseen) == (6, 1, 1, 0)
    assert window.quality("y").n == 0  # outputs not given: not observed
    window.add({"x": x[:2]}, {"other": np.zeros(2)})  # city and y missing from what was given: nulls
    assert window.quality("city").nulls == 3
    assert window.quality("y").to_dict() == {"n": 2, "nulls": 2, "below_min": 0, "above_max": 0, "unseen": 0,
                                            "type_failures": 0}

    strings = np.array(["1.5", "a", "2"], dtype=object)
    window.add({"x": np.column_stack([strings, np.zeros(3), np.zeros(3)]), "city": np.array(["oslo"] * 3)})
    assert window.quality("x[0]").type_failures == 3  # strings are no numbers, even when they parse
    assert window.quality("x[1]").type_failures == 0 and window.rows == 11


def test_moments_cover_finite_values() -> None:
    profile, _, _ = _reference()
    window = Window(profile)
    values = np.array([1.0, 2.0, np.nan, 4.0])
    window.add({"x": np.column_stack([values, values, values])})
    m = window.moments("x[0]")
    assert (m.n, m.sum, m.sumsq, m.min, m.max) == (3, 7.0, 21.0, 1.0, 4.0)
    assert math.isclose(m.mean, np.nanmean(values)) and math.isclose(m.std, np.nanstd(values))
    assert math.isnan(Window(profile).moments("y").mean)
    with pytest.raises(TypeError):
        window.moments("city")
    with pytest.raises(KeyError):
        window.counts("nope")


def test_merge_equals_one_window_fed_both() -> None:
    profile, _, _ = _reference()
    a_in, a_out = _current(1500, seed=2)
    b_in, b_out = _current(900, seed=3)
    a, b, both = Window(profile, seed=1), Window(profile, seed=2), Window(profile)
    a.add(a_in, a_out)
    b.add(b_in, b_out)
    both.add(a_in, a_out)
    both.add(b_in, b_out)
    merged = a.merge(b)
    assert merged.rows == both.rows == 2400
    for name in both.names:
        assert merged.counts(name).tolist() == both.counts(name).tolist()
        assert merged.quality(name) == both.quality(name)
    ma, mb = merged.moments("x[2]"), both.moments("x[2]")
    assert (ma.n, ma.min, ma.max) == (mb.n, mb.min, mb.max) and math.isclose(ma.sum, mb.sum)
    assert merged.multivariate is not None and both.multivariate is not None and a.multivariate is not None
    assert merged.multivariate.error_counts.tolist() == both.multivariate.error_counts.tolist()
    assert merged.multivariate.rows == 2400 and merged.multivariate.sample.shape == (500, 3)
    assert a.rows == 1500 and a.multivariate.sample.shape == (500, 3)  # merging changes neither side
    with pytest.raises(ValueError):
        a.merge(Window(_reference(seed=9)[0]))


def test_merge_of_small_windows_keeps_every_row() -> None:
    profile, _, _ = _reference()
    a, b = Window(profile), Window(profile)
    a.add(*_current(100, seed=4))
    b.add(*_current(200, seed=5))
    merged = a.merge(b)
    assert merged.multivariate is not None and merged.multivariate.sample.shape == (300, 3)
    merged.add(*_current(1000, seed=6))
    assert merged.multivariate.sample.shape == (500, 3) and merged.multivariate.rows == 1300


def test_state_round_trips_through_json_and_continues_identically() -> None:
    profile, _, _ = _reference()
    window = Window(profile, sample_rows=50, seed=3)
    window.add(*_current(700, seed=7))
    restored = Window.from_dict(profile, json.loads(json.dumps(window.to_dict(), allow_nan=False)))
    assert json.dumps(restored.to_dict()) == json.dumps(window.to_dict())
    more = _current(300, seed=8)
    window.add(*more)
    restored.add(*more)
    assert json.dumps(restored.to_dict()) == json.dumps(window.to_dict())
    empty = Window.from_dict(profile, json.loads(json.dumps(Window(profile).to_dict(), allow_nan=False)))
    assert empty.rows == 0 and math.isnan(empty.moments("y").min)


def test_state_of_another_profile_is_refused() -> None:
    profile, _, _ = _reference()
    other = profile_of({"z": np.arange(10.0)})
    with pytest.raises(ValueError):
        Window.from_dict(other, Window(profile).to_dict())


def test_memory_does_not_grow_with_rows() -> None:
    profile, _, _ = _reference()
    sizes = []
    for n in (1_000, 100_000):
        window = Window(profile)
        window.add(*_current(n, seed=10))
        state = window.to_dict()
        assert len(state["multivariate"]["sample"]) == 500
        sizes.append(len(json.dumps(state)))
    assert sizes[1] < sizes[0] * 1.05


def test_add_many_equals_one_add_per_event() -> None:
    profile, _, _ = _reference()
    inputs, outputs = _current(40, seed=11)
    events = [({n: v[i:i + 1] for n, v in inputs.items()}, {n: v[i:i + 1] for n, v in outputs.items()})
              for i in range(40)]
    events.append((None, None))
    events.append(({"x": inputs["x"][:2]}, None))  # no outputs, no city: cannot join the others
    one, many = Window(profile), Window(profile)
    for i, o in events:
        one.add(i, o)
    many.add_many(events)
    assert json.dumps(one.to_dict()) == json.dumps(many.to_dict())
    joined, single = Window(profile), Window(profile)
    joined.add_many(events[:40])  # these join: counted in one call
    for i, o in events[:40]:
        single.add(i, o)
    for name in single.names:  # the same counts; sums differ only in the order of float additions
        assert joined.counts(name).tolist() == single.counts(name).tolist()
        assert joined.quality(name) == single.quality(name)
    assert math.isclose(joined.moments("y").sumsq, single.moments("y").sumsq)
    assert joined.rows == 40 and joined.counts("city").sum() == 40


def test_categories_compare_as_strings() -> None:
    profile = profile_of({"grade": np.array([1, 2, 3] * 10)})
    window = Window(profile)
    window.add({"grade": np.array([1.0, 2.0, 2.5])})
    window.add({"grade": np.array(["3", 3, b"1"], dtype=object)})
    assert window.counts("grade").tolist() == [2, 1, 2, 1]
    assert window.quality("grade").unseen == 1


def test_output_named_like_an_input_is_read_from_the_outputs() -> None:
    profile = profile_of({"y": np.arange(100.0), "z": np.arange(100.0)}, {"y": np.full(100, 7.0)})
    window = Window(profile)
    window.add({"y": np.array([1.0]), "z": np.array([1.0])}, {"y": np.array([1000.0])})
    assert window.quality("output:y").above_max == 1 and window.quality("y").above_max == 0
