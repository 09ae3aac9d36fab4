"""Drift statistics: two-sample tests and distances, on raw arrays and on binned counts.

Every test exists twice. The raw form takes two arrays (for parity with SciPy and small offline
data); the ``*_binned`` form takes counts laid out as a profile's bins, which is all the server
keeps. Numeric bins are right-closed, ``bin i = (edges[i-1], edges[i]]`` with open outer bins
(``bin_counts`` builds that layout); categorical counts are any fixed list of buckets.

==================  ========================================================  ===========  =========
name                what                                                      p-value      effect
==================  ========================================================  ===========  =========
``ks``              Kolmogorov-Smirnov D, ``scipy.stats.ks_2samp``            yes          W normed
``cvm``             Cramér-von Mises T, ``scipy.stats.cramervonmises_2samp``  yes          W normed
``chi_square``      Pearson chi-square test of homogeneity (2 x k table),     yes          JS
                    ``scipy.stats.chi2_contingency(..., correction=False)``
``z``               pooled two-proportion z-test on the first bucket's share  yes          JS
``wasserstein``     Wasserstein-1 / reference std,                            no           statistic
                    ``scipy.stats.wasserstein_distance``
``jensen_shannon``  Jensen-Shannon distance, base 2 (in [0, 1]),              no           statistic
                    ``scipy.spatial.distance.jensenshannon``
``psi``             population stability index, proportions floored at 1e-4   no           statistic
``hellinger``       Hellinger distance, ``sqrt(1 - sum sqrt(p q))`` in [0, 1]  no           statistic
==================  ========================================================  ===========  =========

Why these forms:

* Chi-square is the *homogeneity* test of the 2 x k table (reference counts, window counts), not
  the goodness-of-fit test against the reference's proportions: the reference is a sample too,
  and with the small references chi-square is chosen for (<= 1,000 rows) treating its
  proportions as exact understates the variance by a factor ``1 + n_window / n_reference``
  (5 for 500 vs 2,000 rows), which would make the test alarm far above its nominal rate. Buckets
  empty on both sides are dropped (they carry no information and SciPy rejects zero expectations).
  The z-test is the same test for two buckets: ``z**2`` equals that chi-square statistic.
* Binned KS is exact for data whose distinct values sit on bin edges: D is the largest ECDF
  difference over the edges, and the p-value is ``ks_2samp``'s (exact for ``max(n, m) <= 10,000``,
  else Smirnov's ``kstwo.sf(D, round(n m / (n + m)))``). On continuous data the max over edges
  can only be smaller than the raw D, so the binned test is conservative.
* Binned Wasserstein integrates ``|F_ref - F_window|`` over the bins with values spread uniformly
  inside each bin (piecewise-linear ECDFs, exact integral of the absolute value, sign changes
  included); the open outer bins are clipped at ``low``/``high``, the smaller of the reference's
  and the window's minimum and the larger of their maxima. On normal data with 50 quantile bins
  it is within ``0.01 + 10%`` of the raw value (tested); the uniform spread in the wide outer bins
  overstates large shifts a little (about 0.52 for a true 0.49, 1.11 for 1.01).
* Binned Cramér-von Mises expands the counts to bin indices and calls SciPy, so it equals the raw
  test on data whose values sit on bin edges; it costs O(n log n), unlike the others' O(bins).
* PSI floors each proportion at ``PSI_EPSILON = 1e-4`` (not renormalized) so an empty bin gives a
  large but finite term; without empty bins it equals ``sum rel_entr(q, p) + rel_entr(p, q)``.
* ``mmd`` is the multivariate test: see its docstring.

SciPy is imported inside the functions: the server imports this module without loading SciPy.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "DISTANCE_TESTS",
    "PSI_EPSILON",
    "P_VALUE_TESTS",
    "NumericBins",
    "TestResult",
    "bin_counts",
    "category_counts",
    "chi_square",
    "chi_square_binned",
    "cramer_von_mises",
    "cramer_von_mises_binned",
    "hellinger",
    "hellinger_binned",
    "jensen_shannon",
    "jensen_shannon_binned",
    "ks",
    "ks_binned",
    "mmd",
    "null_quantile",
    "psi",
    "psi_binned",
    "wasserstein_binned",
    "wasserstein_normed",
    "z_proportions",
    "z_proportions_binned",
]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

PSI_EPSILON = 1e-4
"""Floor on each bin's proportion in PSI, so an empty bin contributes a finite term."""

P_VALUE_TESTS = frozenset({"ks", "cvm", "chi_square", "z"})
"""Tests that give a p-value: they drift on ``p < alpha`` and ``effect >= min_effect``."""

DISTANCE_TESTS: dict[str, float] = {"wasserstein": 0.1, "jensen_shannon": 0.1, "psi": 0.1, "hellinger": 0.1}
"""Distance tests (no p-value) and their conventional thresholds (Evidently's defaults)."""

_KS_EXACT_MAX_N = 10_000  # ks_2samp's method="auto" switches to the asymptotic form above this


@dataclass(frozen=True)
class TestResult:
    """One test's outcome.

    ``statistic`` is the test's own number (D, T, chi-square, z, or the distance); ``p_value`` is
    None for distances; ``effect`` is a normalized size comparable across features (W normed for
    numeric p-value tests, the Jensen-Shannon distance for categorical ones, the statistic itself
    for distances); ``n`` is the number of current (window) rows compared.
    """

    __test__ = False  # not a pytest test class

    test: str
    statistic: float
    p_value: float | None
    effect: float
    n: int


@dataclass(frozen=True)
class NumericBins:
    """Where a numeric feature's counts live, for the binned tests that need positions.

    Attributes:
        edges: interior cut points, strictly increasing; ``bin i = (edges[i-1], edges[i]]``.
        low: where the open first bin starts: min of the reference's and the window's minimum.
        high: where the open last bin ends: max of the reference's and the window's maximum.
        scale: the reference's standard deviation, which norms Wasserstein (<= 0 means 1).
    """

    edges: tuple[float, ...]
    low: float
    high: float
    scale: float = 1.0

    def points(self) -> FloatArray:
        """``[low, *edges, high]``, widened so the sequence never decreases."""
        edges = np.asarray(self.edges, dtype=np.float64)
        if edges.size == 0:
            return np.array([self.low, max(self.low, self.high)], dtype=np.float64)
        low = min(self.low, float(edges[0]))
        high = max(self.high, float(edges[-1]))
        return np.concatenate([[low], edges, [high]])

    @property
    def norm(self) -> float:
        """The divisor for Wasserstein: ``scale``, or 1 for a constant (or unknown) reference."""
        return self.scale if self.scale > 0 and math.isfinite(self.scale) else 1.0


# --- layout helpers -------------------------------------------------------------------------


def bin_counts(values: npt.ArrayLike, edges: Sequence[float]) -> IntArray:
    """Count numeric values into right-closed bins ``(edges[i-1], edges[i]]`` (NaN dropped).

    Returns:
        ``len(edges) + 1`` counts, the layout of a numeric profile.
    """
    x = np.asarray(values, dtype=np.float64).ravel()
    x = x[~np.isnan(x)]
    idx = np.searchsorted(np.asarray(edges, dtype=np.float64), x, side="left")
    return np.bincount(idx, minlength=len(edges) + 1).astype(np.int64)


def category_counts(reference: npt.ArrayLike, current: npt.ArrayLike) -> tuple[IntArray, IntArray]:
    """Counts of each distinct label (compared as strings) over the union of both arrays."""
    ref = np.asarray(reference).ravel().astype(str)
    cur = np.asarray(current).ravel().astype(str)
    labels = np.unique(np.concatenate([ref, cur]))
    rc = np.bincount(np.searchsorted(labels, ref), minlength=labels.size).astype(np.int64)
    cc = np.bincount(np.searchsorted(labels, cur), minlength=labels.size).astype(np.int64)
    return rc, cc


def _numeric(values: npt.ArrayLike) -> FloatArray:
    x = np.asarray(values, dtype=np.float64).ravel()
    return x[~np.isnan(x)]


def _counts(reference_counts: npt.ArrayLike, current_counts: npt.ArrayLike) -> tuple[IntArray, IntArray]:
    rc = np.asarray(reference_counts, dtype=np.int64).ravel()
    cc = np.asarray(current_counts, dtype=np.int64).ravel()
    if rc.shape != cc.shape:
        raise ValueError(f"reference and current counts differ in length: {rc.size} != {cc.size}")
    if rc.sum() <= 0 or cc.sum() <= 0:
        raise ValueError("a two-sample test needs rows on both sides")
    if (rc < 0).any() or (cc < 0).any():
        raise ValueError("counts must be non-negative")
    return rc, cc


def _expand(counts: IntArray) -> IntArray:
    """Each row as its bin index: ranks (all KS and CvM look at) are those of values on the edges."""
    return np.repeat(np.arange(counts.size, dtype=np.int64), counts)


# --- numeric: KS, Cramér-von Mises, Wasserstein --------------------------------------------------


def wasserstein_normed(reference: npt.ArrayLike, current: npt.ArrayLike, *, scale: float | None = None) -> TestResult:
    """Wasserstein-1 distance divided by the reference's standard deviation (``np.std``, ddof 0).

    Args:
        reference: reference values (NaN dropped).
        current: window values (NaN dropped).
        scale: the divisor; default the reference's std (a constant reference is normed by 1).
    """
    from scipy.stats import wasserstein_distance

    ref, cur = _numeric(reference), _numeric(current)
    s = float(np.std(ref)) if scale is None else scale
    norm = NumericBins((), 0.0, 0.0, s).norm
    w = float(wasserstein_distance(ref, cur)) / norm
    return TestResult("wasserstein", w, None, w, int(cur.size))


def _abs_linear_integral(a: FloatArray, b: FloatArray, width: FloatArray) -> FloatArray:
    """Exact integral of ``|linear from a to b|`` over ``width`` (elementwise)."""
    same = a * b >= 0
    total = np.abs(a) + np.abs(b)
    with np.errstate(invalid="ignore", divide="ignore"):
        crossing = np.where(total > 0, (a * a + b * b) / (2 * total), 0.0)
    return width * np.where(same, total / 2, crossing)


def _wasserstein_counts(rc: IntArray, cc: npt.NDArray[np.int64], points: FloatArray) -> FloatArray:
    """Binned W1 (not normed) for ``cc`` of shape (..., bins): uniform spread within each bin."""
    fr = np.concatenate([[0.0], np.cumsum(rc) / rc.sum()])
    cum = np.cumsum(cc, axis=-1)
    fc = np.concatenate([np.zeros(cc.shape[:-1] + (1,)), cum / cum[..., -1:]], axis=-1)
    d = fr - fc  # ECDF difference at each point, 0 at both ends
    width = np.diff(points)
    result: FloatArray = _abs_linear_integral(d[..., :-1], d[..., 1:], width).sum(axis=-1)
    return result


def wasserstein_binned(reference_counts: npt.ArrayLike, current_counts: npt.ArrayLike, bins: NumericBins) -> TestResult:
    """Wasserstein-1 / reference std from numeric bin counts (see the module docstring)."""
    rc, cc = _counts(reference_counts, current_counts)
    if rc.size != len(bins.edges) + 1:
        raise ValueError(f"{rc.size} counts do not fit {len(bins.edges)} edges")
    w = float(_wasserstein_counts(rc, cc, bins.points())) / bins.norm
    return TestResult("wasserstein", w, None, w, int(cc.sum()))


def ks(reference: npt.ArrayLike, current: npt.ArrayLike) -> TestResult:
    """Two-sample Kolmogorov-Smirnov test, ``scipy.stats.ks_2samp`` (two-sided, method auto)."""
    from scipy.stats import ks_2samp

    ref, cur = _numeric(reference), _numeric(current)
    res = ks_2samp(ref, cur)
    effect = wasserstein_normed(ref, cur).statistic
    return TestResult("ks", float(res.statistic), float(res.pvalue), effect, int(cur.size))


def ks_binned(
    reference_counts: npt.ArrayLike, current_counts: npt.ArrayLike, bins: NumericBins | None = None
) -> TestResult:
    """Kolmogorov-Smirnov test from bin counts: max ECDF difference over the edges.

    Args:
        reference_counts: reference rows per bin.
        current_counts: window rows per bin.
        bins: the bins' positions, for the effect (W normed); without it the effect is D.
    """
    from scipy.stats import ks_2samp, kstwo

    rc, cc = _counts(reference_counts, current_counts)
    n1, n2 = int(rc.sum()), int(cc.sum())
    if max(n1, n2) <= _KS_EXACT_MAX_N:
        res = ks_2samp(_expand(rc), _expand(cc))
        d, p = float(res.statistic), float(res.pvalue)
    else:
        d = float(np.max(np.abs(np.cumsum(rc) / n1 - np.cumsum(cc) / n2)))
        m, n = sorted([float(n1), float(n2)], reverse=True)
        p = float(np.clip(kstwo.sf(d, np.round(m * n / (m + n))), 0.0, 1.0))
    effect = d if bins is None else wasserstein_binned(rc, cc, bins).statistic
    return TestResult("ks", d, p, effect, n2)


def cramer_von_mises(reference: npt.ArrayLike, current: npt.ArrayLike) -> TestResult:
    """Two-sample Cramér-von Mises test, ``scipy.stats.cramervonmises_2samp`` (method auto)."""
    from scipy.stats import cramervonmises_2samp

    ref, cur = _numeric(reference), _numeric(current)
    res = cramervonmises_2samp(ref, cur)
    effect = wasserstein_normed(ref, cur).statistic
    return TestResult("cvm", float(res.statistic), float(res.pvalue), effect, int(cur.size))


def cramer_von_mises_binned(
    reference_counts: npt.ArrayLike, current_counts: npt.ArrayLike, bins: NumericBins | None = None
) -> TestResult:
    """Cramér-von Mises test from bin counts (ties at bin level; effect as in ``ks_binned``)."""
    from scipy.stats import cramervonmises_2samp

    rc, cc = _counts(reference_counts, current_counts)
    res = cramervonmises_2samp(_expand(rc), _expand(cc))
    t = float(res.statistic)
    effect = t if bins is None else wasserstein_binned(rc, cc, bins).statistic
    return TestResult("cvm", t, float(res.pvalue), effect, int(cc.sum()))


# --- distributions over buckets: chi-square, z, Jensen-Shannon, PSI, Hellinger ------------------


def _js(rc: npt.NDArray[Any], cc: npt.NDArray[Any]) -> float:
    from scipy.spatial.distance import jensenshannon

    return float(jensenshannon(rc, cc, base=2))


def chi_square_binned(reference_counts: npt.ArrayLike, current_counts: npt.ArrayLike) -> TestResult:
    """Pearson chi-square test of homogeneity on the 2 x k table of counts (no Yates correction)."""
    from scipy.stats import chi2_contingency

    rc, cc = _counts(reference_counts, current_counts)
    keep = (rc + cc) > 0
    effect = _js(rc, cc)
    if keep.sum() < 2:
        return TestResult("chi_square", 0.0, 1.0, effect, int(cc.sum()))
    res = chi2_contingency(np.vstack([rc[keep], cc[keep]]), correction=False)
    return TestResult("chi_square", float(res.statistic), float(res.pvalue), effect, int(cc.sum()))


def chi_square(reference: npt.ArrayLike, current: npt.ArrayLike) -> TestResult:
    """Chi-square homogeneity test on two arrays of labels (see ``chi_square_binned``)."""
    return chi_square_binned(*category_counts(reference, current))


def z_proportions_binned(reference_counts: npt.ArrayLike, current_counts: npt.ArrayLike) -> TestResult:
    """Pooled two-proportion z-test on the share of the first bucket (the rest pooled).

    The statistic is signed: positive when the window has a larger share than the reference.
    """
    from scipy.stats import norm

    rc, cc = _counts(reference_counts, current_counts)
    if rc.size < 2:
        raise ValueError("a z-test needs at least two buckets")
    n1, n2 = float(rc.sum()), float(cc.sum())
    p1, p2 = rc[0] / n1, cc[0] / n2
    pooled = (rc[0] + cc[0]) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    z = float((p2 - p1) / se) if se > 0 else 0.0
    p = float(2 * norm.sf(abs(z)))
    return TestResult("z", z, p, _js(rc, cc), int(n2))


def z_proportions(reference: npt.ArrayLike, current: npt.ArrayLike) -> TestResult:
    """Two-proportion z-test on two arrays of a binary label (the first label in sort order)."""
    rc, cc = category_counts(reference, current)
    return z_proportions_binned(rc, cc) if rc.size >= 2 else TestResult("z", 0.0, 1.0, 0.0, int(cc.sum()))


def jensen_shannon_binned(reference_counts: npt.ArrayLike, current_counts: npt.ArrayLike) -> TestResult:
    """Jensen-Shannon distance (base 2, so in [0, 1]) between the two bucket distributions."""
    rc, cc = _counts(reference_counts, current_counts)
    js = _js(rc, cc)
    return TestResult("jensen_shannon", js, None, js, int(cc.sum()))


def jensen_shannon(reference: npt.ArrayLike, current: npt.ArrayLike) -> TestResult:
    """Jensen-Shannon distance between two arrays of labels."""
    return jensen_shannon_binned(*category_counts(reference, current))


def _psi_counts(rc: IntArray, cc: npt.NDArray[np.int64]) -> FloatArray:
    p = np.maximum(rc / rc.sum(), PSI_EPSILON)
    q = np.maximum(cc / cc.sum(axis=-1, keepdims=True), PSI_EPSILON)
    result: FloatArray = ((q - p) * np.log(q / p)).sum(axis=-1)
    return result


def psi_binned(reference_counts: npt.ArrayLike, current_counts: npt.ArrayLike) -> TestResult:
    """Population stability index, ``sum (q - p) ln(q / p)`` with proportions floored at 1e-4."""
    rc, cc = _counts(reference_counts, current_counts)
    v = float(_psi_counts(rc, cc))
    return TestResult("psi", v, None, v, int(cc.sum()))


def psi(reference: npt.ArrayLike, current: npt.ArrayLike) -> TestResult:
    """PSI between two arrays of labels (bin numeric data first: ``bin_counts``)."""
    return psi_binned(*category_counts(reference, current))


def _hellinger_counts(rc: IntArray, cc: npt.NDArray[np.int64]) -> FloatArray:
    p = rc / rc.sum()
    q = cc / cc.sum(axis=-1, keepdims=True)
    result: FloatArray = np.sqrt(np.maximum(0.0, 1.0 - np.sqrt(p * q).sum(axis=-1)))
    return result


def hellinger_binned(reference_counts: npt.ArrayLike, current_counts: npt.ArrayLike) -> TestResult:
    """Hellinger distance ``sqrt(1 - sum sqrt(p q))`` between the bucket distributions, in [0, 1]."""
    rc, cc = _counts(reference_counts, current_counts)
    v = float(_hellinger_counts(rc, cc))
    return TestResult("hellinger", v, None, v, int(cc.sum()))


def hellinger(reference: npt.ArrayLike, current: npt.ArrayLike) -> TestResult:
    """Hellinger distance between two arrays of labels."""
    return hellinger_binned(*category_counts(reference, current))


# --- calibration: the null distribution of a distance at a window size ---------------------------


def _js_counts(rc: IntArray, cc: npt.NDArray[np.int64]) -> FloatArray:
    from scipy.spatial.distance import jensenshannon

    ref = np.broadcast_to(rc, cc.shape)
    result: FloatArray = np.asarray(jensenshannon(ref, cc, base=2, axis=-1), dtype=np.float64)
    return result


def null_quantile(
    test: str,
    reference_counts: npt.ArrayLike,
    n: int,
    q: float,
    *,
    bins: NumericBins | None = None,
    draws: int = 10_000,
    seed: int = 0,
) -> float:
    """Upper ``1 - q`` quantile of a distance between the reference and an undrifted window of n rows.

    Undrifted windows are multinomial draws of ``n`` rows from the reference's bin proportions
    (a parametric bootstrap on the reference), drawn in seeded chunks of 2,000. Where
    ``q * draws >= 10`` the quantile is the empirical one. Below that (the usual case: the
    family-wise rate 0.001 split over 20 features asks for ``q = 5e-5``) it is a peaks-over-threshold
    estimate: the excesses over the empirical 95th percentile are fitted by an exponential and
    the quantile read off its tail, ``u + mean_excess * ln(0.05 / q)``. These statistics have
    light (near-Gaussian) tails, so an exponential tail errs on the high side: fewer alarms.

    Args:
        test: a distance test (``wasserstein``, ``jensen_shannon``, ``psi``, ``hellinger``).
        reference_counts: the reference's counts per bin.
        n: the window's rows.
        q: the tail probability (the per-test false-alarm rate).
        bins: numeric positions, required for ``wasserstein``.
        draws: bootstrap windows drawn.
        seed: seeds the draws.
    """
    rc = np.asarray(reference_counts, dtype=np.int64).ravel()
    stat: Callable[[npt.NDArray[np.int64]], FloatArray]
    if test == "wasserstein":
        if bins is None:
            raise ValueError("wasserstein needs the bins' positions")
        points, norm = bins.points(), bins.norm
        stat = lambda c: _wasserstein_counts(rc, c, points) / norm  # noqa: E731
    elif test == "jensen_shannon":
        stat = lambda c: _js_counts(rc, c)  # noqa: E731
    elif test == "psi":
        stat = lambda c: _psi_counts(rc, c)  # noqa: E731
    elif test == "hellinger":
        stat = lambda c: _hellinger_counts(rc, c)  # noqa: E731
    else:
        raise ValueError(f"no null quantile for {test!r}; distance tests are {sorted(DISTANCE_TESTS)}")
    if n <= 0 or rc.sum() <= 0:
        raise ValueError("null_quantile needs rows on both sides")
    rng = np.random.default_rng(seed)
    p = rc / rc.sum()
    values = []
    for start in range(0, draws, 2_000):
        size = min(2_000, draws - start)
        values.append(stat(rng.multinomial(n, p, size=size)))
    sample = np.concatenate(values)
    if q * sample.size >= 10:
        return float(np.quantile(sample, 1 - q))
    u = float(np.quantile(sample, 0.95))
    excess = sample[sample > u] - u
    mean_excess = float(excess.mean()) if excess.size else 0.0
    return u + mean_excess * math.log(0.05 / q)


# --- multivariate: maximum mean discrepancy ------------------------------------------------------


def mmd(reference: npt.ArrayLike, current: npt.ArrayLike, *, permutations: int = 200, seed: int = 0) -> TestResult:
    """Maximum mean discrepancy between two samples of rows with a Gaussian (RBF) kernel.

    The kernel is ``exp(-|x - y|^2 / (2 sigma^2))`` with ``sigma`` the median pairwise distance
    within the reference sample (the median heuristic). The statistic is the biased estimate of
    MMD^2 (V-statistic, always >= 0); the effect is its square root, MMD itself, in [0, sqrt 2].
    The p-value comes from ``permutations`` seeded relabellings of the pooled rows. Because 200
    permutations cannot resolve a p-value under 1/201 while the family-wise level split over a
    window's tests is ~1e-4, the reported p-value is the tail of a Gamma fitted by moments to the
    permutation distribution (Gretton et al., 2009, "A fast, consistent kernel two-sample test").
    When the permutations have no spread (identical rows) it falls back to the plain
    permutation p-value ``(1 + #{null >= observed}) / (1 + permutations)``.

    Args:
        reference: (n, d) reference rows (already standardized).
        current: (m, d) window rows on the same scale.
        permutations: relabellings drawn.
        seed: seeds the relabellings.
    """
    from scipy.stats import gamma

    x = np.asarray(reference, dtype=np.float64)
    y = np.asarray(current, dtype=np.float64)
    x = x.reshape(len(x), -1)
    y = y.reshape(len(y), -1)
    n, m = len(x), len(y)
    if n < 2 or m < 2:
        raise ValueError("mmd needs at least two rows on each side")
    z = np.vstack([x, y])
    sq = np.sum(z * z, axis=1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2 * z @ z.T, 0.0)
    ref_d2 = d2[:n, :n][np.triu_indices(n, k=1)]
    median = float(np.median(ref_d2))
    sigma2 = median if median > 0 else 1.0
    k = np.exp(-d2 / (2 * sigma2))

    # MMD_b^2 = w' K w with w = +1/n on reference rows and -1/m on window rows, so every
    # permutation is one column of a matrix product.
    def weights(is_current: npt.NDArray[np.bool_]) -> FloatArray:
        return np.where(is_current, -1.0 / m, 1.0 / n)

    labels = np.zeros(n + m, dtype=bool)
    labels[n:] = True
    w0 = weights(labels)
    observed = float(w0 @ k @ w0)
    rng = np.random.default_rng(seed)
    w = np.stack([weights(rng.permutation(labels)) for _ in range(permutations)], axis=1)
    null = np.sum(w * (k @ w), axis=0)
    mean, var = float(null.mean()), float(null.var(ddof=1))
    if mean > 0 and var > 0:
        p = float(gamma.sf(observed, mean * mean / var, scale=var / mean))
    else:
        p = float((1 + np.sum(null >= observed)) / (1 + permutations))
    effect = math.sqrt(max(observed, 0.0))
    return TestResult("mmd", observed, p, effect, m)
