"""Bandit traffic weights: how much traffic each arm of a served model gets next.

A rollout controller keeps, per arm (a version or alias serving the same name),
the count, sum and sum of squares of the rewards it has seen, and on each
cadence calls ``bandit_weights`` to turn them into traffic weights that sum to
one. Rewards are either binary labels from the feedback API (was the
prediction right, did the user click) or a real-valued metric of the
prediction. Everything here is a pure function of those aggregates and a
NumPy ``Generator``: no clocks, no I/O, no state between calls.

Two policies:

* Thompson sampling: an arm's weight is the posterior probability that it is
  the best arm, estimated by Monte Carlo (Thompson 1933; Chapelle & Li 2011,
  "An empirical evaluation of Thompson sampling"; the "randomized probability
  matching" of Scott 2010). Binary rewards use Beta posteriors, real-valued
  rewards a Normal-inverse-gamma posterior whose marginal for the mean is a
  Student t.
* epsilon-greedy: the arm with the best observed mean gets ``1 - epsilon``
  plus its share of ``epsilon``; the others share ``epsilon`` equally
  (Sutton & Barto, "Reinforcement Learning", 2nd ed., section 2.2).

Either way a ``floor`` then guarantees every arm a minimum share, so no arm
ever starves and its estimate keeps improving.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from shipyard.errors import ConfigError

# SciPy is imported inside the functions that draw: importing this module does not import it.

__all__ = [
    "ArmRewards",
    "BanditConfig",
    "bandit_weights",
    "empirical_regret",
    "epsilon_greedy",
    "regret",
    "thompson_bernoulli",
    "thompson_gaussian",
]

#: Pseudo-observations the Gaussian prior puts on an arm's mean: small, so
#: one arm's own data outweighs it after a handful of rewards.
_GAUSSIAN_PRIOR_KAPPA = 0.01
#: Shape of the Gaussian prior's inverse-gamma on the variance; 1 means the
#: prior guess of the variance counts as two observations.
_GAUSSIAN_PRIOR_ALPHA = 1.0


@dataclass(frozen=True)
class ArmRewards:
    """What one arm has earned so far, as sufficient statistics.

    For binary rewards ``total`` is the number of successes and
    ``total_of_squares`` equals it (a 0/1 reward is its own square).
    """

    arm: str
    """The arm's name, as the router knows it."""
    n: int
    """How many rewards were observed."""
    total: float
    """Sum of the rewards."""
    total_of_squares: float
    """Sum of the squared rewards (used by the Gaussian posterior)."""

    def __post_init__(self) -> None:
        if self.n < 0:
            raise ValueError(f"arm {self.arm!r}: n must not be negative, got {self.n}")
        if self.total_of_squares < 0:
            raise ValueError(f"arm {self.arm!r}: total_of_squares must not be negative, got {self.total_of_squares}")

    @property
    def mean(self) -> float | None:
        """The observed mean reward, or None before the first reward."""
        return self.total / self.n if self.n else None


@dataclass(frozen=True)
class BanditConfig:
    """How a bandit rollout turns rewards into traffic weights."""

    algorithm: Literal["thompson", "epsilon_greedy"] = "thompson"
    """Thompson sampling (weight = probability of being best) or epsilon-greedy."""
    reward: Literal["binary", "gaussian"] = "binary"
    """Binary labels from the feedback API, or a real-valued metric of each prediction."""
    epsilon: float = 0.1
    """Share of traffic epsilon-greedy spreads evenly over all arms (ignored by Thompson)."""
    floor: float = 0.0
    """Smallest share any arm gets; times the number of arms it must not exceed 1."""
    draws: int = 10_000
    """Monte Carlo draws per recomputation for Thompson sampling (error about 0.5/sqrt(draws))."""
    prior: tuple[float, float] = (1.0, 1.0)
    """Beta(alpha, beta) prior of a binary arm's success rate; (1, 1) is uniform."""

    def __post_init__(self) -> None:
        if self.algorithm not in ("thompson", "epsilon_greedy"):
            raise ConfigError(f"algorithm must be 'thompson' or 'epsilon_greedy', got {self.algorithm!r}")
        if self.reward not in ("binary", "gaussian"):
            raise ConfigError(f"reward must be 'binary' or 'gaussian', got {self.reward!r}")
        if not 0.0 <= self.epsilon <= 1.0:
            raise ConfigError(f"epsilon must be between 0 and 1, got {self.epsilon}")
        if not 0.0 <= self.floor <= 1.0:
            raise ConfigError(f"floor must be between 0 and 1, got {self.floor}")
        if self.draws < 1:
            raise ConfigError(f"draws must be at least 1, got {self.draws}")
        if len(self.prior) != 2 or min(self.prior) <= 0:
            raise ConfigError(f"prior must be two positive numbers (alpha, beta), got {self.prior}")


def bandit_weights(config: BanditConfig, arms: Sequence[ArmRewards], rng: np.random.Generator) -> dict[str, float]:
    """The traffic weights the controller applies next: one per arm, in arm order, summing to 1.

    Args:
        config: the rollout's bandit settings.
        arms: each arm's reward aggregates; names must be distinct.
        rng: the source of randomness for Thompson sampling (unused by epsilon-greedy).

    Returns:
        Arm name to traffic share.
    """
    if config.algorithm == "epsilon_greedy":
        return epsilon_greedy(arms, epsilon=config.epsilon, floor=config.floor)
    if config.reward == "binary":
        return thompson_bernoulli(arms, prior=config.prior, floor=config.floor, draws=config.draws, rng=rng)
    return thompson_gaussian(arms, floor=config.floor, draws=config.draws, rng=rng)


def thompson_bernoulli(
    arms: Sequence[ArmRewards],
    *,
    prior: tuple[float, float] = (1.0, 1.0),
    floor: float = 0.0,
    draws: int = 10_000,
    rng: np.random.Generator,
) -> dict[str, float]:
    """Weights for binary rewards: each arm's posterior probability of having the highest success rate.

    An arm with ``s`` successes in ``n`` trials has the posterior
    Beta(alpha + s, beta + n - s) under a Beta(alpha, beta) prior. The
    probability of being best is estimated from ``draws`` joint draws of all
    arms; its Monte Carlo standard error is at most ``0.5 / sqrt(draws)``.

    Args:
        arms: successes (``total``) out of trials (``n``) per arm.
        prior: Beta prior parameters shared by every arm.
        floor: smallest weight any arm gets (see ``_apply_floor``).
        draws: Monte Carlo draws.
        rng: the source of randomness.

    Returns:
        Arm name to traffic share, summing to 1.
    """
    from scipy import stats
    _check_arms(arms)
    alpha0, beta0 = prior
    if alpha0 <= 0 or beta0 <= 0:
        raise ValueError(f"prior must be two positive numbers, got {prior}")
    for a in arms:
        if not 0 <= a.total <= a.n:
            raise ValueError(f"arm {a.arm!r}: binary rewards need 0 <= total <= n, got total={a.total}, n={a.n}")
    n = np.array([a.n for a in arms], dtype=float)
    s = np.array([a.total for a in arms], dtype=float)
    samples = stats.beta(alpha0 + s, beta0 + n - s).rvs(size=(_check_draws(draws), len(arms)), random_state=rng)
    return _apply_floor(arms, _share_of_wins(samples), floor)


def thompson_gaussian(
    arms: Sequence[ArmRewards],
    *,
    floor: float = 0.0,
    draws: int = 10_000,
    rng: np.random.Generator,
) -> dict[str, float]:
    """Weights for real-valued rewards: each arm's posterior probability of having the highest mean.

    Each arm's rewards are modelled as Normal with unknown mean and variance
    under a conjugate Normal-inverse-gamma prior NIG(mu0, kappa0, alpha0, beta0)
    (Murphy 2007, "Conjugate Bayesian analysis of the Gaussian distribution",
    section 6). The prior is weak and the same for every arm, so it favours none:

    * ``mu0`` is the mean of all rewards pooled over the arms (0 without data);
    * ``kappa0 = 0.01``: the prior mean counts as a hundredth of an observation;
    * ``alpha0 = 1`` and ``beta0 = alpha0 * v``, where ``v`` is the pooled
      variance of all rewards (1 when there are fewer than two rewards or they
      are all equal): the prior guess of the variance is the pooled one, worth
      two observations. Borrowing the scale from the data keeps the prior
      equally weak whatever unit the metric is in.

    After ``n`` rewards with mean ``m`` and sum of squared deviations ``ss``,
    the mean's marginal posterior is Student t with ``2 * alpha_n`` degrees of
    freedom, location ``mu_n`` and scale ``sqrt(beta_n / (alpha_n * kappa_n))``.
    An arm with no reward therefore has a t(2) posterior ten pooled standard
    deviations wide, and one with a single reward a t(3) about as wide as one
    observation: both are wide enough that Thompson sampling tries them.

    Args:
        arms: count, sum and sum of squares of the rewards per arm.
        floor: smallest weight any arm gets (see ``_apply_floor``).
        draws: Monte Carlo draws.
        rng: the source of randomness.

    Returns:
        Arm name to traffic share, summing to 1.
    """
    from scipy import stats
    _check_arms(arms)
    n = np.array([a.n for a in arms], dtype=float)
    total = np.array([a.total for a in arms], dtype=float)
    squares = np.array([a.total_of_squares for a in arms], dtype=float)

    n_all = n.sum()
    mu0 = total.sum() / n_all if n_all > 0 else 0.0
    pooled_var = (squares.sum() - n_all * mu0**2) / (n_all - 1) if n_all >= 2 else 0.0
    kappa0, alpha0 = _GAUSSIAN_PRIOR_KAPPA, _GAUSSIAN_PRIOR_ALPHA
    beta0 = alpha0 * (pooled_var if pooled_var > 0 else 1.0)

    mean = np.divide(total, n, out=np.zeros_like(total), where=n > 0)
    # sum of squares minus n * mean^2 can come out slightly negative in floating point
    ss = np.maximum(squares - n * mean**2, 0.0)
    kappa_n = kappa0 + n
    mu_n = (kappa0 * mu0 + n * mean) / kappa_n
    alpha_n = alpha0 + n / 2
    beta_n = beta0 + ss / 2 + kappa0 * n * (mean - mu0) ** 2 / (2 * kappa_n)
    scale = np.sqrt(beta_n / (alpha_n * kappa_n))

    samples = stats.t(2 * alpha_n, loc=mu_n, scale=scale).rvs(size=(_check_draws(draws), len(arms)), random_state=rng)
    return _apply_floor(arms, _share_of_wins(samples), floor)


def epsilon_greedy(arms: Sequence[ArmRewards], *, epsilon: float, floor: float = 0.0) -> dict[str, float]:
    """Weights for epsilon-greedy: the best observed mean gets ``1 - epsilon + epsilon / k``, others ``epsilon / k``.

    Ties go to the first of the tied arms in ``arms`` order, so the result is
    deterministic. An arm without rewards has no observed mean and is never
    the greedy choice (epsilon still sends it traffic); while no arm has any
    reward the weights are uniform.

    Args:
        arms: reward aggregates per arm.
        epsilon: share of traffic spread evenly over all ``k`` arms, in [0, 1].
        floor: smallest weight any arm gets (see ``_apply_floor``).

    Returns:
        Arm name to traffic share, summing to 1.
    """
    _check_arms(arms)
    if not 0.0 <= epsilon <= 1.0:
        raise ValueError(f"epsilon must be between 0 and 1, got {epsilon}")
    k = len(arms)
    n = np.array([a.n for a in arms], dtype=float)
    if not (n > 0).any():
        return _apply_floor(arms, np.full(k, 1.0 / k), floor)
    total = np.array([a.total for a in arms], dtype=float)
    means = np.where(n > 0, np.divide(total, n, out=np.zeros_like(total), where=n > 0), -np.inf)
    weights = np.full(k, epsilon / k)
    weights[int(np.argmax(means))] += 1.0 - epsilon  # argmax returns the first of equal maxima
    return _apply_floor(arms, weights, floor)


def regret(arm_means_true: Mapping[str, float], allocations: Mapping[str, int]) -> float:
    """Expected regret of an allocation: reward lost against sending every unit to the truly best arm.

    ``sum over arms of allocations[arm] * (best true mean - true mean of arm)``.
    Only simulations know the true means; in production see ``empirical_regret``.

    Args:
        arm_means_true: the true mean reward of every arm.
        allocations: units sent to each arm (arms left out got none).

    Returns:
        The expected reward forgone, in reward units.
    """
    if not arm_means_true:
        raise ValueError("arm_means_true must name at least one arm")
    unknown = [arm for arm in allocations if arm not in arm_means_true]
    if unknown:
        raise ValueError(f"allocations name arms without a true mean: {unknown}")
    negative = [arm for arm, units in allocations.items() if units < 0]
    if negative:
        raise ValueError(f"allocations must not be negative: {negative}")
    best = max(arm_means_true.values())
    return float(sum(units * (best - arm_means_true[arm]) for arm, units in allocations.items()))


def empirical_regret(arms: Sequence[ArmRewards]) -> float:
    """An estimate of regret from observed rewards alone: ``n_total * best observed mean - total reward``.

    This is what a dashboard can show without knowing the true means, and it
    is only an estimate: the best observed mean is the largest of several noisy
    means, so it tends to overstate the best arm (the winner's curse) and the
    estimate runs high while arms have few rewards; and it cannot see an arm
    better than all observed ones. Arms without rewards count for nothing.

    Args:
        arms: reward aggregates per arm.

    Returns:
        The estimated reward forgone (0 before any reward).
    """
    observed = [a for a in arms if a.n > 0]
    if not observed:
        return 0.0
    best = max(a.total / a.n for a in observed)
    n_total = sum(a.n for a in observed)
    return float(n_total * best - sum(a.total for a in observed))


def _check_arms(arms: Sequence[ArmRewards]) -> None:
    if not arms:
        raise ValueError("a bandit needs at least one arm")
    names = [a.arm for a in arms]
    if len(set(names)) != len(names):
        raise ValueError(f"arm names must be distinct, got {names}")


def _check_draws(draws: int) -> int:
    if draws < 1:
        raise ValueError(f"draws must be at least 1, got {draws}")
    return draws


def _share_of_wins(samples: NDArray[np.float64]) -> NDArray[np.float64]:
    """Fraction of rows (joint posterior draws) in which each column (arm) is the largest."""
    wins = np.bincount(np.argmax(samples, axis=1), minlength=samples.shape[1])
    return np.asarray(wins / samples.shape[0], dtype=np.float64)


def _apply_floor(arms: Sequence[ArmRewards], weights: NDArray[np.float64], floor: float) -> dict[str, float]:
    """Give every arm at least ``floor``: ``floor + (1 - k * floor) * weight``.

    The affine map keeps the order of the weights and their sum of 1; with
    ``k * floor == 1`` every arm gets exactly ``1 / k``.
    """
    k = len(arms)
    if floor < 0:
        raise ValueError(f"floor must not be negative, got {floor}")
    # a small tolerance so that floor = 1/k (a uniform split) is accepted despite rounding
    if floor * k > 1 + 1e-12:
        raise ValueError(f"floor {floor} times {k} arms exceeds 1: there is not enough traffic for every arm's floor")
    spare = max(1.0 - k * floor, 0.0)
    shares = floor + spare * weights
    shares /= shares.sum()  # absorb rounding so the weights sum to 1
    return {a.arm: float(w) for a, w in zip(arms, shares, strict=True)}
