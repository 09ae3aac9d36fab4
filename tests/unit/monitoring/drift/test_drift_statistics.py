"""Drift statistics: parity with SciPy, binned forms against raw forms, hand-worked examples."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import special, stats
from scipy.spatial.distance import euclidean, jensenshannon

from shipyard.monitoring.drift import statistics as st

TOL = 1e-6


@pytest.fixture(scope="module")
def numeric() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(20261207)
    return rng.normal(0.0, 2.0, 3_000), rng.normal(0.3, 2.2, 1_200)


@pytest.fixture(scope="module")
def labels() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    cats = np.array(["a", "b", "c", "d", "e"])
    return rng.choice(cats, 2_000, p=[0.4, 0.3, 0.15, 0.1, 0.05]), rng.choice(cats, 900, p=[0.35, 0.3, 0.2, 0.1, 0.05])


# --- parity with SciPy on raw arrays -------------------------------------------------------------


def test_ks_equals_scipy_ks_2samp(numeric: tuple[np.ndarray, np.ndarray]) -> None:
    ref, cur = numeric
    res, want = st.ks(ref, cur), stats.ks_2samp(ref, cur)
    assert res.statistic == pytest.approx(want.statistic, abs=TOL)
    assert res.p_value == pytest.approx(want.pvalue, abs=TOL)
    assert res.effect == pytest.approx(stats.wasserstein_distance(ref, cur) / np.std(ref), abs=TOL)
    assert res.n == cur.size


def test_cramer_von_mises_equals_scipy(numeric: tuple[np.ndarray, np.ndarray]) -> None:
    ref, cur = numeric
    res, want = st.cramer_von_mises(ref, cur), stats.cramervonmises_2samp(ref, cur)
    assert res.statistic == pytest.approx(want.statistic, abs=TOL)
    assert res.p_value == pytest.approx(want.pvalue, abs=TOL)


def test_wasserstein_normed_equals_scipy_over_reference_std(numeric: tuple[np.ndarray, np.ndarray]) -> None:
    ref, cur = numeric
    res = st.wasserstein_normed(ref, cur)
    assert res.statistic == pytest.approx(stats.wasserstein_distance(ref, cur) / np.std(ref), abs=TOL)
    assert res.p_value is None and res.effect == res.statistic


def test_chi_square_is_scipy_contingency_without_correction(labels: tuple[np.ndarray, np.ndarray]) -> None:
    ref, cur = labels
    res = st.chi_square(ref, cur)
    table = np.array([[np.sum(ref == c) for c in "abcde"], [np.sum(cur == c) for c in "abcde"]])
    want = stats.chi2_contingency(table, correction=False)
    assert res.statistic == pytest.approx(want.statistic, abs=TOL)
    assert res.p_value == pytest.approx(want.pvalue, abs=TOL)
    assert res.effect == pytest.approx(jensenshannon(table[0], table[1], base=2), abs=TOL)


def test_z_test_squared_is_the_two_by_two_chi_square() -> None:
    rng = np.random.default_rng(3)
    ref, cur = rng.choice(["no", "yes"], 1_500, p=[0.7, 0.3]), rng.choice(["no", "yes"], 800, p=[0.65, 0.35])
    z, chi = st.z_proportions(ref, cur), st.chi_square(ref, cur)
    assert z.statistic**2 == pytest.approx(chi.statistic, abs=TOL)
    assert z.p_value == pytest.approx(chi.p_value, abs=TOL)


def test_jensen_shannon_is_scipy_distance_base_2(labels: tuple[np.ndarray, np.ndarray]) -> None:
    ref, cur = labels
    rc, cc = st.category_counts(ref, cur)
    assert st.jensen_shannon(ref, cur).statistic == pytest.approx(jensenshannon(rc, cc, base=2), abs=TOL)


def test_psi_is_symmetric_kl_without_empty_bins(labels: tuple[np.ndarray, np.ndarray]) -> None:
    ref, cur = labels
    rc, cc = st.category_counts(ref, cur)
    p, q = rc / rc.sum(), cc / cc.sum()
    want = special.rel_entr(q, p).sum() + special.rel_entr(p, q).sum()
    assert st.psi(ref, cur).statistic == pytest.approx(want, abs=TOL)


def test_hellinger_is_scaled_euclidean_of_root_proportions(labels: tuple[np.ndarray, np.ndarray]) -> None:
    ref, cur = labels
    rc, cc = st.category_counts(ref, cur)
    want = euclidean(np.sqrt(rc / rc.sum()), np.sqrt(cc / cc.sum())) / math.sqrt(2)
    assert st.hellinger(ref, cur).statistic == pytest.approx(want, abs=TOL)


# --- hand-worked examples ------------------------------------------------------------------------


def test_worked_example_two_by_two() -> None:
    # 30/20 vs 20/30: every expected count is 25, chi2 = 4 * 5**2 / 25 = 4 on 1 df, p = 2 * (1 - Phi(2));
    # pooled share 0.5, se = sqrt(0.25 * (1/50 + 1/50)) = 0.1, z = (0.4 - 0.6) / 0.1 = -2.
    chi = st.chi_square_binned([30, 20], [20, 30])
    z = st.z_proportions_binned([30, 20], [20, 30])
    assert chi.statistic == pytest.approx(4.0, abs=TOL)
    assert chi.p_value == pytest.approx(0.0455002639, abs=TOL)
    assert z.statistic == pytest.approx(-2.0, abs=TOL)
    assert z.p_value == pytest.approx(0.0455002639, abs=TOL)


def test_worked_example_distances() -> None:
    # PSI of 50/50 -> 60/40: 0.1 ln 1.2 + 0.1 ln 1.25 = 0.0405465; disjoint supports are at distance 1.
    assert st.psi_binned([50, 50], [60, 40]).statistic == pytest.approx(0.1 * math.log(1.2) + 0.1 * math.log(1.25))
    assert st.jensen_shannon_binned([1, 0], [0, 1]).statistic == pytest.approx(1.0)
    assert st.hellinger_binned([1, 0], [0, 1]).statistic == pytest.approx(1.0)
    assert st.ks([1, 2, 3, 4], [5, 6, 7, 8]).statistic == pytest.approx(1.0)


def test_psi_floors_empty_bins_to_a_finite_value() -> None:
    res = st.psi_binned([100, 0], [90, 10])
    p, q = np.array([1.0, st.PSI_EPSILON]), np.array([0.9, 0.1])
    assert math.isfinite(res.statistic)
    assert res.statistic == pytest.approx(float(((q - p) * np.log(q / p)).sum()))


# --- binned forms against raw forms --------------------------------------------------------------


def _on_edges(n_ref: int, n_cur: int, seed: int) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    """Integer-valued data 0..29 with edges at 0..28: every distinct value sits on a bin edge."""
    rng = np.random.default_rng(seed)
    ref = rng.binomial(29, 0.5, n_ref).astype(float)
    cur = rng.binomial(29, 0.53, n_cur).astype(float)
    return ref, cur, tuple(float(e) for e in range(29))


@pytest.mark.parametrize(("n_ref", "n_cur"), [(3_000, 800), (30_000, 12_000)])  # exact and asymptotic p
def test_binned_ks_equals_raw_when_values_sit_on_edges(n_ref: int, n_cur: int) -> None:
    ref, cur, edges = _on_edges(n_ref, n_cur, seed=n_ref)
    raw, binned = st.ks(ref, cur), st.ks_binned(st.bin_counts(ref, edges), st.bin_counts(cur, edges))
    assert binned.statistic == pytest.approx(raw.statistic, abs=TOL)
    assert binned.p_value == pytest.approx(raw.p_value, abs=TOL)


def test_binned_cvm_equals_raw_when_values_sit_on_edges() -> None:
    ref, cur, edges = _on_edges(2_000, 700, seed=11)
    raw = st.cramer_von_mises(ref, cur)
    binned = st.cramer_von_mises_binned(st.bin_counts(ref, edges), st.bin_counts(cur, edges))
    assert binned.statistic == pytest.approx(raw.statistic, abs=TOL)
    assert binned.p_value == pytest.approx(raw.p_value, abs=TOL)


def test_binned_categorical_tests_equal_raw(labels: tuple[np.ndarray, np.ndarray]) -> None:
    ref, cur = labels
    rc, cc = st.category_counts(ref, cur)
    for raw_fn, binned_fn in [
        (st.chi_square, st.chi_square_binned),
        (st.jensen_shannon, st.jensen_shannon_binned),
        (st.psi, st.psi_binned),
        (st.hellinger, st.hellinger_binned),
    ]:
        assert binned_fn(rc, cc) == raw_fn(ref, cur)


@pytest.mark.parametrize("shift", [0.0, 0.1, 0.5])
def test_binned_wasserstein_is_close_to_raw_on_continuous_data(shift: float) -> None:
    # Stated tolerance for 50 quantile bins on normal data: 0.01 + 10% of the value (the outer
    # bins' uniform spread overstates shifts a little).
    rng = np.random.default_rng(5)
    ref, cur = rng.normal(size=10_000), rng.normal(shift, 1.0, 2_000)
    edges = tuple(np.unique(np.quantile(ref, np.linspace(0, 1, 51)[1:-1])))
    bins = st.NumericBins(edges, min(ref.min(), cur.min()), max(ref.max(), cur.max()), float(ref.std()))
    raw = st.wasserstein_normed(ref, cur).statistic
    binned = st.wasserstein_binned(st.bin_counts(ref, edges), st.bin_counts(cur, edges), bins).statistic
    assert abs(binned - raw) <= 0.01 + 0.1 * raw
    ks = st.ks_binned(st.bin_counts(ref, edges), st.bin_counts(cur, edges), bins)
    assert ks.effect == pytest.approx(binned)
    assert ks.statistic <= st.ks(ref, cur).statistic + TOL  # max over edges never exceeds the raw D


def test_binned_wasserstein_of_identical_counts_is_zero() -> None:
    bins = st.NumericBins((0.0, 1.0), -1.0, 2.0, 1.0)
    assert st.wasserstein_binned([5, 5, 5], [10, 10, 10], bins).statistic == pytest.approx(0.0)


def test_bin_counts_uses_right_closed_bins() -> None:
    assert st.bin_counts([0.0, 1.0, 1.5, 2.0, 3.0, np.nan], [1.0, 2.0]).tolist() == [2, 2, 1]


def test_binned_tests_reject_empty_sides_and_mismatched_layouts() -> None:
    with pytest.raises(ValueError, match="both sides"):
        st.chi_square_binned([1, 2], [0, 0])
    with pytest.raises(ValueError, match="length"):
        st.psi_binned([1, 2], [1, 2, 3])


# --- calibration and multivariate ----------------------------------------------------------------


def test_null_quantile_is_seeded_and_conservative_in_the_far_tail() -> None:
    rng = np.random.default_rng(9)
    ref = rng.normal(size=10_000)
    edges = tuple(np.unique(np.quantile(ref, np.linspace(0, 1, 51)[1:-1])))
    rc = st.bin_counts(ref, edges)
    bins = st.NumericBins(edges, float(ref.min()), float(ref.max()), float(ref.std()))
    a = st.null_quantile("wasserstein", rc, 1_000, 1e-4, bins=bins, seed=1)
    assert a == st.null_quantile("wasserstein", rc, 1_000, 1e-4, bins=bins, seed=1)
    empirical = st.null_quantile("wasserstein", rc, 1_000, 1e-4, bins=bins, draws=100_000, seed=2)
    assert empirical * 0.97 <= a <= empirical * 1.3
    assert st.null_quantile("jensen_shannon", rc, 4_000, 1e-4) < st.null_quantile("jensen_shannon", rc, 1_000, 1e-4)
    with pytest.raises(ValueError, match="no null quantile"):
        st.null_quantile("ks", rc, 1_000, 1e-4)


def test_mmd_separates_shifted_rows_and_is_seeded() -> None:
    rng = np.random.default_rng(4)
    ref, same = rng.normal(size=(300, 5)), rng.normal(size=(300, 5))
    shifted = rng.normal(size=(300, 5)) + np.array([1.0, 0, 0, 0, 0])
    null, alt = st.mmd(ref, same, seed=1), st.mmd(ref, shifted, seed=1)
    assert null.p_value is not None and null.p_value > 0.01
    assert alt.p_value is not None and alt.p_value < 1e-6
    assert alt.effect > null.effect
    assert st.mmd(ref, shifted, seed=1) == alt


@pytest.mark.parametrize("module", ["statistics", "detector"])
def test_drift_modules_import_scipy_only_inside_functions(module: str) -> None:
    # the server imports the detector at start-up; SciPy must load only when a test first runs
    path = Path(st.__file__).with_name(f"{module}.py")
    tree = ast.parse(path.read_text())
    top = [n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)]
    names = [a.name for n in top if isinstance(n, ast.Import) for a in n.names]
    names += [n.module or "" for n in top if isinstance(n, ast.ImportFrom)]
    assert not [n for n in names if n.split(".")[0] == "scipy"]
