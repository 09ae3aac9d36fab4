"""Drift detection: compare a window of current rows with the reference profile, calibrated.

``compare(profile, window, settings)`` runs one test per input feature, per output feature
(prediction drift, same machinery) and, for the numeric inputs together, a PCA reconstruction-error
test and an MMD test. It is pure: the server's drift loop and ``shipyard drift`` call it and store
or render the ``DriftReport``.

**Which test.** A feature's test is ``settings.tests[name]`` or, unset, the table users know from
Evidently, chosen by the reference's size (``profile.rows``):

===================================  ===============================  ==============================
feature                              reference <= 1,000 rows          reference > 1,000 rows
===================================  ===============================  ==============================
numeric (more than 5 bins)           ``ks``                           ``wasserstein`` (normed)
categorical, or numeric <= 5 bins    ``chi_square``                   ``jensen_shannon``
categorical with 2 categories        ``z``                            ``jensen_shannon``
===================================  ===============================  ==============================

**When a feature drifts** (the calibration; "a bare p < 0.05" alarms on every window at large n
and about once per 20 features per window at any n):

* Let ``k`` be the number of tests run on this window (features, outputs, multivariate) and
  ``alpha = settings.false_alarms / k``. By the union bound a window with no drift raises any
  alarm with probability at most ``false_alarms`` (0.001: one window in 1,000).
* A p-value test (ks, cvm, chi_square, z, pca_reconstruction, mmd) drifts when ``p < alpha``
  **and** ``effect >= min_effect`` (``settings.thresholds[name]`` overrides the floor for that
  feature). The effect floor is what keeps 1,000,000-row windows from alarming on a 0.01-sigma
  shift that is "significant" but immaterial. ``FeatureDrift.threshold`` is then ``alpha``.
* A distance test (wasserstein, jensen_shannon, psi, hellinger) drifts when its statistic is
  ``>= threshold``, where threshold is the larger of the configured value (or the test's
  conventional 0.1) and the ``1 - alpha`` quantile of the statistic between the reference and
  undrifted windows of this size (``statistics.null_quantile``: 4,000 seeded multinomial draws
  from the reference's bins, tail beyond the 95th percentile fitted). Small windows are noisy, so
  there the bootstrap sets the bar (W normed needs ~0.33 at 200 rows, ~0.15 at 1,000, ~0.11 at
  2,000). The window size is rounded *down* to a grid of ratio 2**(1/4) (a smaller n has a higher
  null quantile, so this errs towards fewer alarms) and the quantile is cached per
  (feature bins, test, size, alpha): a growing window does not redo the bootstrap at every check.
* Windows with fewer than ``min_rows`` rows, and features with fewer than ``min_rows`` non-null
  values, are not compared: ``skipped`` says why, ``drifted`` is False.

**Multivariate** (numeric inputs standardized by the reference, see ``profile.MultivariateProfile``):

* ``pca_reconstruction``: binned KS between the window's and the reference's histograms of PCA
  reconstruction error. Effect: the excess share of window rows in the reference's top error band,
  ``share_window(error > e) - share_reference(error > e)`` with ``e`` the error edge whose
  reference exceedance is closest to 1% (the reference's 99th percentile when it is an edge).
  An effect of 0.1 means 10% more rows than in the reference fall outside its normal band.
* ``mmd``: ``statistics.mmd`` between the profile's reference sample and the window's reservoir
  (RBF kernel, median heuristic, 200 seeded permutations, Gamma-fitted p-value). Effect: MMD.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from types import MappingProxyType
from typing import Any

import numpy as np
import numpy.typing as npt

from shipyard.monitoring.drift import statistics as st
from shipyard.monitoring.drift.null_cache import NullThresholdCache
from shipyard.monitoring.drift.profile import CategoricalProfile, FeatureProfile, NumericProfile, Profile
from shipyard.monitoring.drift.window import Window

__all__ = ["SMALL_REFERENCE_ROWS", "TESTS", "DriftReport", "DriftSettings", "FeatureDrift", "compare", "default_test"]

SMALL_REFERENCE_ROWS = 1_000
"""References up to this many rows get the p-value tests (KS, chi-square, z), larger ones distances."""

TESTS = frozenset({"ks", "chi_square", "z", "wasserstein", "jensen_shannon", "psi", "hellinger", "cvm"})
"""Test names a feature can be given in ``DriftSettings.tests``."""

_NUMERIC_ONLY = frozenset({"ks", "cvm", "wasserstein"})
_FEW_BINS = 5  # Evidently treats a numeric feature with <= 5 distinct values as categorical
_MMD_PERMUTATIONS = 200
_BOOTSTRAP_DRAWS = 4_000  # the tail beyond the 95th percentile (200 draws) is fitted, see null_quantile
_SEED = 0


@dataclass(frozen=True)
class DriftSettings:
    """How drift is judged (the ``monitoring.drift`` section of ``shipyard.yaml``)."""

    tests: Mapping[str, str] = field(default_factory=dict)
    """Feature -> test name (one of ``TESTS``); unset features follow Evidently's table."""
    thresholds: Mapping[str, float] = field(default_factory=dict)
    """Feature -> threshold: the statistic's bar for distance tests, the effect floor for p-value tests."""
    false_alarms: float = 0.001
    """Target probability that a window without drift raises any alarm."""
    min_rows: int = 200
    """Windows (and features) with fewer rows are not compared, so small windows never alarm."""
    min_effect: float = 0.1
    """Smallest effect (W normed, JS distance, MMD, excess outlier share) a p-value test alarms on."""
    drift_share: float = 0.5
    """The dataset drifts when at least this share of the compared input features drifted."""
    multivariate: bool = True
    """Run the PCA reconstruction-error and MMD tests when the profile has a multivariate part."""

    def __post_init__(self) -> None:
        unknown = {f: t for f, t in self.tests.items() if t not in TESTS}
        if unknown:
            raise ValueError(f"unknown drift tests {unknown}; choose from {sorted(TESTS)}")
        bad = {f: v for f, v in self.thresholds.items() if not (math.isfinite(v) and v >= 0)}
        if bad:
            raise ValueError(f"thresholds must be finite and >= 0, got {bad}")
        if not 0 < self.false_alarms < 1:
            raise ValueError(f"false_alarms must be in (0, 1), got {self.false_alarms}")
        if self.min_rows < 1:
            raise ValueError(f"min_rows must be >= 1, got {self.min_rows}")
        if not (math.isfinite(self.min_effect) and self.min_effect >= 0):
            raise ValueError(f"min_effect must be finite and >= 0, got {self.min_effect}")
        if not 0 < self.drift_share <= 1:
            raise ValueError(f"drift_share must be in (0, 1], got {self.drift_share}")
        object.__setattr__(self, "tests", MappingProxyType(dict(self.tests)))
        object.__setattr__(self, "thresholds", MappingProxyType({k: float(v) for k, v in self.thresholds.items()}))


def _num(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def _unnum(x: float | None) -> float:
    return math.nan if x is None else float(x)


@dataclass(frozen=True)
class FeatureDrift:
    """One feature's (or one multivariate test's) result on a window.

    ``threshold`` is the p-value bar (``alpha``) for p-value tests and the statistic's bar for
    distance tests. A skipped feature has ``skipped`` set, zeros for its numbers and ``drifted``
    False.
    """

    feature: str
    test: str
    statistic: float
    p_value: float | None
    effect: float
    threshold: float
    n: int
    drifted: bool
    skipped: str | None = None
    quality: Mapping[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (non-finite numbers as None)."""
        return {
            "feature": self.feature,
            "test": self.test,
            "statistic": _num(self.statistic),
            "p_value": _num(self.p_value),
            "effect": _num(self.effect),
            "threshold": _num(self.threshold),
            "n": self.n,
            "drifted": self.drifted,
            "skipped": self.skipped,
            "quality": dict(self.quality),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FeatureDrift:
        """The result ``to_dict`` described."""
        return cls(
            feature=str(d["feature"]),
            test=str(d["test"]),
            statistic=_unnum(d["statistic"]),
            p_value=None if d["p_value"] is None else float(d["p_value"]),
            effect=_unnum(d["effect"]),
            threshold=_unnum(d["threshold"]),
            n=int(d["n"]),
            drifted=bool(d["drifted"]),
            skipped=d.get("skipped"),
            quality={str(k): int(v) for k, v in (d.get("quality") or {}).items()},
        )


@dataclass(frozen=True)
class DriftReport:
    """A window compared with its profile.

    ``share`` is the share of compared (not skipped) input features that drifted; the dataset
    ``drifted`` when ``share >= settings.drift_share`` and at least one input was compared.
    """

    rows: int
    features: tuple[FeatureDrift, ...]
    outputs: tuple[FeatureDrift, ...]
    multivariate: tuple[FeatureDrift, ...]
    share: float
    drifted: bool

    @property
    def tests(self) -> int:
        """Tests run (not skipped): the ``k`` the false-alarm rate was split over."""
        return sum(f.skipped is None for f in (*self.features, *self.outputs, *self.multivariate))

    @property
    def any_drift(self) -> bool:
        """Whether any feature, output or multivariate test drifted."""
        return any(f.drifted for f in (*self.features, *self.outputs, *self.multivariate))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict that ``from_dict`` turns back into an equal report."""
        return {
            "rows": self.rows,
            "features": [f.to_dict() for f in self.features],
            "outputs": [f.to_dict() for f in self.outputs],
            "multivariate": [f.to_dict() for f in self.multivariate],
            "share": self.share,
            "drifted": self.drifted,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DriftReport:
        """The report ``to_dict`` described."""
        return cls(
            rows=int(d["rows"]),
            features=tuple(FeatureDrift.from_dict(f) for f in d["features"]),
            outputs=tuple(FeatureDrift.from_dict(f) for f in d["outputs"]),
            multivariate=tuple(FeatureDrift.from_dict(f) for f in d["multivariate"]),
            share=float(d["share"]),
            drifted=bool(d["drifted"]),
        )


# --- choosing and running a feature's test ---------------------------------------------------------


def default_test(feature: FeatureProfile, reference_rows: int) -> str:
    """The test Evidently's table gives a feature for a reference of ``reference_rows`` rows."""
    small = reference_rows <= SMALL_REFERENCE_ROWS
    if isinstance(feature, NumericProfile) and len(feature.counts) > _FEW_BINS:
        return "ks" if small else "wasserstein"
    if not small:
        return "jensen_shannon"
    if isinstance(feature, CategoricalProfile) and sum(c > 0 for c in feature.counts) == 2:
        return "z"
    return "chi_square"


def _size_bucket(n: int) -> int:
    """``n`` rounded down to the grid 2**(j/4): fewer bootstrap runs as a window grows."""
    return max(1, math.floor(2 ** (math.floor(4 * math.log2(n) + 1e-9) / 4)))


@lru_cache(maxsize=4096)
def _null_threshold(
    test: str,
    counts: tuple[int, ...],
    edges: tuple[float, ...],
    low: float,
    high: float,
    scale: float,
    n: int,
    q: float,
) -> float:
    bins = st.NumericBins(edges, low, high, scale) if test == "wasserstein" else None
    return st.null_quantile(test, counts, n, q, bins=bins, draws=_BOOTSTRAP_DRAWS, seed=_SEED)


def _cached_null_threshold(store: NullThresholdCache | None, *inputs: Any) -> float:
    """``_null_threshold``, looked up in (and added to) ``store`` first when there is one."""
    if store is None:
        return _null_threshold(*inputs)
    key = store.key(*inputs, _BOOTSTRAP_DRAWS, _SEED)
    found = store.get(key)
    if found is None:
        found = _null_threshold(*inputs)
        store.put(key, found)
    return found


@dataclass(frozen=True)
class _Plan:
    feature: FeatureProfile
    test: str
    counts: npt.NDArray[np.int64]
    quality: dict[str, int]
    skipped: str | None


def _plan(feature: FeatureProfile, window: Window, profile: Profile, settings: DriftSettings) -> _Plan:
    name = feature.name
    test = settings.tests.get(name) or default_test(feature, profile.rows)
    counts = np.asarray(window.counts(name), dtype=np.int64)
    quality = {k: int(v) for k, v in window.quality(name).to_dict().items()}
    n = int(counts.sum())
    skipped = None
    if window.rows < settings.min_rows:
        skipped = f"window has {window.rows} rows, fewer than min_rows={settings.min_rows}"
    elif feature.n == 0:
        skipped = "no reference data"
    elif n < settings.min_rows:
        skipped = f"{n} non-null rows, fewer than min_rows={settings.min_rows}"
    elif test in _NUMERIC_ONLY and not isinstance(feature, NumericProfile):
        skipped = f"test {test} needs a numeric feature"
    elif test == "z" and not isinstance(feature, CategoricalProfile):
        skipped = "test z needs a categorical feature"
    return _Plan(feature, test, counts, quality, skipped)


def _run(plan: _Plan, window: Window, settings: DriftSettings, alpha: float,
         thresholds: NullThresholdCache | None = None) -> FeatureDrift:
    f, test = plan.feature, plan.test
    ref = np.asarray(f.counts, dtype=np.int64)
    cur = plan.counts
    bins = None
    if isinstance(f, NumericProfile):
        m = window.moments(f.name)
        bins = st.NumericBins(f.edges, min(f.min, m.min), max(f.max, m.max), f.std)
    if test in st.P_VALUE_TESTS:
        if test == "ks":
            res = st.ks_binned(ref, cur, bins)
        elif test == "cvm":
            res = st.cramer_von_mises_binned(ref, cur, bins)
        elif test == "chi_square":
            res = st.chi_square_binned(ref, cur)
        else:
            res = st.z_proportions_binned(ref, cur)
        floor = settings.thresholds.get(f.name, settings.min_effect)
        p = res.p_value if res.p_value is not None else 1.0
        drifted = p < alpha and res.effect >= floor
        return FeatureDrift(f.name, test, res.statistic, res.p_value, res.effect, alpha, res.n, drifted,
                            quality=plan.quality)  # fmt: skip
    if test == "wasserstein":
        assert bins is not None and isinstance(f, NumericProfile)  # _plan skips it on categorical features
        res = st.wasserstein_binned(ref, cur, bins)
        key = (f.edges, float(f.min), float(f.max), float(f.std))
    elif test == "jensen_shannon":
        res = st.jensen_shannon_binned(ref, cur)
        key = ((), 0.0, 0.0, 1.0)
    elif test == "psi":
        res = st.psi_binned(ref, cur)
        key = ((), 0.0, 0.0, 1.0)
    else:
        res = st.hellinger_binned(ref, cur)
        key = ((), 0.0, 0.0, 1.0)
    configured = settings.thresholds.get(f.name, st.DISTANCE_TESTS[test])
    null = _cached_null_threshold(thresholds, test, tuple(int(c) for c in f.counts), *key, _size_bucket(res.n), alpha)
    threshold = max(configured, null)
    drifted = res.statistic >= threshold
    return FeatureDrift(f.name, test, res.statistic, None, res.effect, threshold, res.n, drifted, quality=plan.quality)


def _skipped(plan: _Plan) -> FeatureDrift:
    n = int(plan.counts.sum())
    return FeatureDrift(plan.feature.name, plan.test, 0.0, None, 0.0, 0.0, n, False, plan.skipped, plan.quality)


# --- multivariate -----------------------------------------------------------------------------------


def _multivariate_plans(profile: Profile, window: Window, settings: DriftSettings) -> list[tuple[str, str | None]]:
    mv, wmv = profile.multivariate, window.multivariate
    if not settings.multivariate or mv is None or wmv is None:
        return []
    plans: list[tuple[str, str | None]] = []
    rows = int(wmv.rows)
    few = f"{rows} complete rows, fewer than min_rows={settings.min_rows}" if rows < settings.min_rows else None
    plans.append(("pca_reconstruction", few or (None if sum(mv.error_counts) else "no reference data")))
    enough = len(mv.sample) >= 2 and wmv.sample.shape[0] >= 2
    plans.append(("mmd", few or (None if enough else "fewer than 2 sample rows")))
    return plans


def _top_band_excess(ref: npt.NDArray[np.int64], cur: npt.NDArray[np.int64]) -> float:
    """Window share minus reference share above the error edge whose reference exceedance is nearest 1%."""
    if ref.size < 2:
        return 0.0
    ref_above = 1.0 - np.cumsum(ref)[:-1] / ref.sum()  # exceedance at each interior edge
    cur_above = 1.0 - np.cumsum(cur)[:-1] / cur.sum()
    gap = np.abs(ref_above - 0.01)
    i = int(np.flatnonzero(gap == gap.min())[-1])  # ties: the higher edge
    return float(cur_above[i] - ref_above[i])


def _run_multivariate(
    test: str, profile: Profile, window: Window, settings: DriftSettings, alpha: float
) -> FeatureDrift:
    mv, wmv = profile.multivariate, window.multivariate
    assert mv is not None and wmv is not None  # planned only when both exist
    if test == "pca_reconstruction":
        ref = np.asarray(mv.error_counts, dtype=np.int64)
        cur = np.asarray(wmv.error_counts, dtype=np.int64)
        ks = st.ks_binned(ref, cur)
        statistic, p, effect, n = ks.statistic, ks.p_value, _top_band_excess(ref, cur), ks.n
    else:
        res = st.mmd(np.asarray(mv.sample), wmv.sample, permutations=_MMD_PERMUTATIONS, seed=_SEED)
        statistic, p, effect, n = res.statistic, res.p_value, res.effect, res.n
    floor = settings.thresholds.get(test, settings.min_effect)
    drifted = (p if p is not None else 1.0) < alpha and effect >= floor
    return FeatureDrift(test, test, statistic, p, effect, alpha, n, drifted)


# --- the comparison ---------------------------------------------------------------------------------


def compare(profile: Profile, window: Window, settings: DriftSettings | None = None, *,
            thresholds: NullThresholdCache | None = None) -> DriftReport:
    """Compare a window with its reference profile (see the module docstring for the rules).

    Args:
        profile: the version's reference profile.
        window: current rows counted on that profile's bins.
        settings: tests, thresholds and the false-alarm target; defaults when None.
        thresholds: where distance tests' null thresholds are kept between processes (None: memory only).

    Returns:
        Per input feature, per output and per multivariate test results, and the dataset verdict.
    """
    settings = settings or DriftSettings()
    inputs = [_plan(f, window, profile, settings) for f in profile.inputs]
    outputs = [_plan(f, window, profile, settings) for f in profile.outputs]
    multivariate = _multivariate_plans(profile, window, settings)
    k = sum(p.skipped is None for p in (*inputs, *outputs)) + sum(reason is None for _, reason in multivariate)
    alpha = settings.false_alarms / max(k, 1)

    def run(plan: _Plan) -> FeatureDrift:
        return _skipped(plan) if plan.skipped else _run(plan, window, settings, alpha, thresholds)

    features = tuple(run(p) for p in inputs)
    outs = tuple(run(p) for p in outputs)
    mv = tuple(
        FeatureDrift(test, test, 0.0, None, 0.0, 0.0, 0, False, reason)
        if reason
        else _run_multivariate(test, profile, window, settings, alpha)
        for test, reason in multivariate
    )
    compared = [f for f in features if f.skipped is None]
    share = sum(f.drifted for f in compared) / len(compared) if compared else 0.0
    return DriftReport(window.rows, features, outs, mv, share, bool(compared) and share >= settings.drift_share)
