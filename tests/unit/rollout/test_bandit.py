"""Bandit traffic weights: probability of being best against SciPy integrals, floors, epsilon-greedy on fixed
data, regret by hand, and simulated rollouts in which the better arm must win the traffic."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import integrate, special, stats

from shipyard.errors import ConfigError
from shipyard.rollout.bandit import (
    ArmRewards,
    BanditConfig,
    bandit_weights,
    empirical_regret,
    epsilon_greedy,
    regret,
    thompson_bernoulli,
    thompson_gaussian,
)


def binary(arm: str, n: int, successes: int) -> ArmRewards:
    return ArmRewards(arm, n, float(successes), float(successes))


def from_samples(arm: str, x: np.ndarray) -> ArmRewards:
    return ArmRewards(arm, len(x), float(x.sum()), float((x**2).sum()))


def mc_tolerance(p: float, draws: int) -> float:
    """Four Monte Carlo standard errors of a share estimated from ``draws`` draws."""
    return 4 * math.sqrt(p * (1 - p) / draws)


# --- probability of being best, binary rewards ---------------------------------------------------------------


def prob_a_beats_b_closed_form(a1: int, b1: int, a2: int, b2: int) -> float:
    """P(X > Y) for X ~ Beta(a1, b1), Y ~ Beta(a2, b2), integer parameters.

    The published finite sum (E. Miller, "Formulas for Bayesian A/B testing", 2015):
    P(Y > X) = sum_{i=0}^{a2-1} B(a1 + i, b1 + b2) / ((b2 + i) B(1 + i, b2) B(a1, b1)).
    """
    i = np.arange(a2)
    log_terms = special.betaln(a1 + i, b1 + b2) - np.log(b2 + i) - special.betaln(1 + i, b2) - special.betaln(a1, b1)
    return 1.0 - float(np.exp(log_terms).sum())


def prob_best_by_quad(dists: list[stats.rv_continuous], lo: float, hi: float) -> list[float]:
    """P(arm i is the largest) = integral of f_i(x) * prod_{j != i} F_j(x) dx, for independent arms."""
    out = []
    for i, di in enumerate(dists):
        others = [d for j, d in enumerate(dists) if j != i]

        def integrand(x: float, di: stats.rv_continuous = di, others: list[stats.rv_continuous] = others) -> float:
            return float(di.pdf(x) * np.prod([d.cdf(x) for d in others]))

        value, _ = integrate.quad(integrand, lo, hi, limit=200)
        out.append(value)
    return out


def test_two_beta_posteriors_probability_of_best_matches_integral_and_closed_form() -> None:
    # 12/40 vs 10/50 under a uniform prior: posteriors Beta(13, 29) and Beta(11, 41)
    draws = 200_000
    weights = thompson_bernoulli([binary("a", 40, 12), binary("b", 50, 10)], draws=draws,
                                 rng=np.random.default_rng(1))
    by_quad = prob_best_by_quad([stats.beta(13, 29), stats.beta(11, 41)], 0.0, 1.0)[0]
    closed = prob_a_beats_b_closed_form(13, 29, 11, 41)
    assert by_quad == pytest.approx(closed, abs=1e-8)  # the two references agree with each other
    assert abs(weights["a"] - closed) < mc_tolerance(closed, draws)
    assert weights["a"] + weights["b"] == pytest.approx(1.0)


def test_the_prior_enters_the_posterior() -> None:
    # a strong Beta(50, 50) prior pulls 3/5 vs 1/5 towards each other: Beta(53, 52) vs Beta(51, 54)
    draws = 200_000
    weights = thompson_bernoulli([binary("a", 5, 3), binary("b", 5, 1)], prior=(50.0, 50.0), draws=draws,
                                 rng=np.random.default_rng(2))
    expected = prob_a_beats_b_closed_form(53, 52, 51, 54)
    assert 0.55 < expected < 0.75  # far from what the data alone say (about 0.9)
    assert abs(weights["a"] - expected) < mc_tolerance(expected, draws)


def test_three_beta_posteriors_probability_of_best_matches_integral() -> None:
    arms = [binary("a", 100, 30), binary("b", 80, 27), binary("c", 20, 5)]
    draws = 200_000
    weights = thompson_bernoulli(arms, draws=draws, rng=np.random.default_rng(3))
    expected = prob_best_by_quad([stats.beta(31, 71), stats.beta(28, 54), stats.beta(6, 16)], 0.0, 1.0)
    assert sum(expected) == pytest.approx(1.0, abs=1e-6)
    for arm, p in zip(arms, expected, strict=True):
        assert abs(weights[arm.arm] - p) < mc_tolerance(p, draws), arm.arm


def test_arms_without_data_share_traffic_evenly() -> None:
    draws = 100_000
    weights = thompson_bernoulli([binary("a", 0, 0), binary("b", 0, 0), binary("c", 0, 0), binary("d", 0, 0)],
                                 draws=draws, rng=np.random.default_rng(4))
    for w in weights.values():
        assert abs(w - 0.25) < mc_tolerance(0.25, draws)


def test_binary_rewards_must_be_successes_out_of_trials() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="total"):
        thompson_bernoulli([binary("a", 10, 11), binary("b", 10, 1)], rng=rng)
    with pytest.raises(ValueError, match="distinct"):
        thompson_bernoulli([binary("a", 10, 1), binary("a", 10, 1)], rng=rng)
    with pytest.raises(ValueError, match="at least one arm"):
        thompson_bernoulli([], rng=rng)
    with pytest.raises(ValueError, match="negative"):
        binary("a", -1, 0)


# --- probability of being best, real-valued rewards ----------------------------------------------------------


def test_gaussian_probability_of_best_matches_the_reference_posterior() -> None:
    """With hundreds of rewards the weak prior is negligible: each mean's posterior is t(n-1, mean, s / sqrt(n)),
    the posterior under the reference prior p(mu, sigma^2) ~ 1 / sigma^2 (Gelman et al., Bayesian Data Analysis,
    3rd ed., section 3.2). Arms differ in variance, so each arm's own spread must be used."""
    data = np.random.default_rng(5)
    xa = data.normal(1.0, 1.0, size=400)
    xb = data.normal(1.0, 2.0, size=300)
    draws = 200_000
    weights = thompson_gaussian([from_samples("a", xa), from_samples("b", xb)], draws=draws,
                                rng=np.random.default_rng(6))
    posteriors = [stats.t(len(x) - 1, loc=x.mean(), scale=x.std(ddof=1) / math.sqrt(len(x))) for x in (xa, xb)]
    expected = prob_best_by_quad(posteriors, -5.0, 7.0)[1]
    assert 0.2 < expected < 0.8  # a case where the spread matters
    # Monte Carlo error plus a little for the weak prior (three more degrees of freedom, a pooled variance guess)
    assert abs(weights["b"] - expected) < mc_tolerance(expected, draws) + 0.005


def test_gaussian_arms_with_fewer_than_two_rewards_are_explored() -> None:
    data = np.random.default_rng(7)
    settled = [from_samples("a", data.normal(1.0, 1.0, 1000)), from_samples("b", data.normal(1.1, 1.0, 1000))]
    for newcomer in (ArmRewards("new", 0, 0.0, 0.0), from_samples("new", np.array([1.0]))):
        weights = thompson_gaussian([*settled, newcomer], draws=20_000, rng=np.random.default_rng(8))
        # a wide posterior around the pooled mean beats both settled arms about half the time
        assert weights["new"] > 0.25, newcomer
        assert weights["b"] > 10 * weights["a"]


def test_gaussian_arm_without_rewards_has_the_documented_wide_prior() -> None:
    """An arm without rewards: t with 2 degrees of freedom around the pooled mean, ten pooled deviations wide."""
    data = np.random.default_rng(15)
    xa, xb = data.normal(0.0, 1.0, 1000), data.normal(3.0, 1.0, 1000)
    draws = 100_000
    weights = thompson_gaussian([from_samples("a", xa), from_samples("b", xb), ArmRewards("new", 0, 0.0, 0.0)],
                                draws=draws, rng=np.random.default_rng(16))
    pooled = np.concatenate([xa, xb])
    prior = stats.t(2, loc=pooled.mean(), scale=10 * pooled.std(ddof=1))
    # arm b's own posterior is a hundred times narrower than the prior: treat its mean as known
    expected = float(prior.sf(xb.mean()))
    assert 0.4 < expected < 0.5
    assert abs(weights["new"] - expected) < mc_tolerance(expected, draws) + 0.005


def test_gaussian_weights_do_not_depend_on_the_unit_of_the_reward() -> None:
    data = np.random.default_rng(9)
    raw = [data.normal(1.0, 1.0, 50), data.normal(1.2, 1.0, 30), data.normal(0.9, 1.0, 1)]
    names = ["a", "b", "c"]
    plain = thompson_gaussian([from_samples(n, x) for n, x in zip(names, raw, strict=True)], draws=20_000,
                              rng=np.random.default_rng(10))
    # the same rewards in milli-units with an offset: a weak prior must not favour either scale
    rescaled = thompson_gaussian([from_samples(n, 1000 * x + 5000) for n, x in zip(names, raw, strict=True)],
                                 draws=20_000, rng=np.random.default_rng(10))
    for name in names:
        assert rescaled[name] == pytest.approx(plain[name], abs=1e-3)


# --- floor -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("floor", [0.0, 0.05, 0.1, 0.2, 0.25])
def test_weights_respect_the_floor_and_sum_to_one(floor: float) -> None:
    arms = [binary("a", 1000, 300), binary("b", 1000, 100), binary("c", 50, 10), binary("d", 0, 0)]
    for weights in (
        thompson_bernoulli(arms, floor=floor, draws=5_000, rng=np.random.default_rng(11)),
        thompson_gaussian(arms, floor=floor, draws=5_000, rng=np.random.default_rng(11)),
        epsilon_greedy(arms, epsilon=0.1, floor=floor),
    ):
        assert list(weights) == ["a", "b", "c", "d"]
        assert sum(weights.values()) == pytest.approx(1.0, abs=1e-12)
        assert min(weights.values()) >= floor - 1e-12


def test_floor_lifts_a_starved_arm_to_exactly_the_floor() -> None:
    # 900/1000 vs 100/1000: the second arm is never best in any draw
    weights = thompson_bernoulli([binary("a", 1000, 900), binary("b", 1000, 100)], floor=0.1, draws=10_000,
                                 rng=np.random.default_rng(12))
    assert weights == pytest.approx({"a": 0.9, "b": 0.1})


def test_floor_of_one_over_k_gives_an_even_split() -> None:
    arms = [binary("a", 1000, 900), binary("b", 1000, 100), binary("c", 10, 1)]
    weights = thompson_bernoulli(arms, floor=1 / 3, rng=np.random.default_rng(13))
    assert weights == pytest.approx({"a": 1 / 3, "b": 1 / 3, "c": 1 / 3})


@pytest.mark.parametrize("floor", [0.34, -0.01])
def test_a_floor_that_cannot_be_met_is_refused(floor: float) -> None:
    arms = [binary("a", 10, 1), binary("b", 10, 2), binary("c", 10, 3)]
    with pytest.raises(ValueError, match="floor"):
        thompson_bernoulli(arms, floor=floor, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="floor"):
        thompson_gaussian(arms, floor=floor, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="floor"):
        epsilon_greedy(arms, epsilon=0.1, floor=floor)


# --- epsilon-greedy --------------------------------------------------------------------------------------------


def test_epsilon_greedy_exact_weights() -> None:
    # means 0.10, 0.12 and none; k = 3, epsilon = 0.3: the best gets 0.7 + 0.1, the others 0.1
    arms = [binary("a", 100, 10), binary("b", 50, 6), binary("c", 0, 0)]
    assert epsilon_greedy(arms, epsilon=0.3) == pytest.approx({"a": 0.1, "b": 0.8, "c": 0.1})
    # a floor of 0.2 maps w to 0.2 + (1 - 3 * 0.2) * w
    assert epsilon_greedy(arms, epsilon=0.3, floor=0.2) == pytest.approx({"a": 0.24, "b": 0.52, "c": 0.24})
    assert epsilon_greedy(arms, epsilon=0.0) == pytest.approx({"a": 0.0, "b": 1.0, "c": 0.0})
    assert epsilon_greedy(arms, epsilon=1.0) == pytest.approx({"a": 1 / 3, "b": 1 / 3, "c": 1 / 3})


def test_epsilon_greedy_uses_real_valued_means() -> None:
    arms = [ArmRewards("a", 4, 10.0, 30.0), ArmRewards("b", 2, 4.0, 9.0)]  # means 2.5 and 2.0
    assert epsilon_greedy(arms, epsilon=0.2) == pytest.approx({"a": 0.9, "b": 0.1})


def test_epsilon_greedy_breaks_ties_by_arm_order() -> None:
    a, b = binary("a", 100, 10), binary("b", 50, 5)  # both 0.10
    assert epsilon_greedy([a, b], epsilon=0.2) == pytest.approx({"a": 0.9, "b": 0.1})
    assert epsilon_greedy([b, a], epsilon=0.2) == pytest.approx({"b": 0.9, "a": 0.1})


def test_epsilon_greedy_without_any_reward_is_uniform() -> None:
    assert epsilon_greedy([binary("a", 0, 0), binary("b", 0, 0)], epsilon=0.1) == {"a": 0.5, "b": 0.5}


def test_epsilon_outside_the_unit_interval_is_refused() -> None:
    with pytest.raises(ValueError, match="epsilon"):
        epsilon_greedy([binary("a", 1, 1)], epsilon=1.5)


# --- config and entry point ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs", [{"algorithm": "ucb"}, {"reward": "poisson"}, {"epsilon": -0.1},
                                    {"floor": 1.5}, {"draws": 0}, {"prior": (0.0, 1.0)}])
def test_config_refuses_values_that_cannot_work(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError, match=next(iter(kwargs))):
        BanditConfig(**kwargs)  # type: ignore[arg-type]


def test_entry_point_follows_the_config() -> None:
    arms = [binary("a", 100, 10), binary("b", 100, 14)]
    assert bandit_weights(BanditConfig(algorithm="epsilon_greedy", epsilon=0.2, floor=0.05), arms,
                          np.random.default_rng(0)) == epsilon_greedy(arms, epsilon=0.2, floor=0.05)
    for reward, policy in (("binary", thompson_bernoulli), ("gaussian", thompson_gaussian)):
        config = BanditConfig(reward=reward, floor=0.05, draws=3_000)  # type: ignore[arg-type]
        got = bandit_weights(config, arms, np.random.default_rng(14))
        assert got == policy(arms, floor=0.05, draws=3_000, rng=np.random.default_rng(14))


# --- regret ----------------------------------------------------------------------------------------------------


def test_regret_of_an_allocation() -> None:
    means = {"a": 0.10, "b": 0.12}
    assert regret(means, {"a": 30_000, "b": 30_000}) == pytest.approx(600.0)  # 30,000 units x 0.02 lost
    assert regret(means, {"b": 60_000}) == 0.0
    assert regret({"a": 1.0, "b": 1.1, "c": 0.5}, {"a": 10, "b": 5, "c": 2}) == pytest.approx(10 * 0.1 + 2 * 0.6)
    with pytest.raises(ValueError, match="without a true mean"):
        regret(means, {"z": 1})
    with pytest.raises(ValueError, match="negative"):
        regret(means, {"a": -1})


def test_empirical_regret_from_observed_rewards() -> None:
    # best observed mean 30/200 = 0.15 over 300 units: 45 expected against 40 earned
    assert empirical_regret([binary("a", 100, 10), binary("b", 200, 30), binary("c", 0, 0)]) == pytest.approx(5.0)
    assert empirical_regret([binary("a", 0, 0)]) == 0.0


# --- simulated rollouts ----------------------------------------------------------------------------------------

ROUNDS = 60  # bound on how long the better arm may take to win the traffic
UNITS = 1_000  # requests per round
SEEDS = range(10)
RATES = {"a": 0.10, "b": 0.12}  # "b" is the better arm


def simulate_binary(config: BanditConfig, seed: int) -> tuple[float, float, float]:
    """Rounds of ``UNITS`` requests split by the current weights; Bernoulli rewards; weights recomputed per round.

    Returns the better arm's final weight, its share of the last 10 rounds' traffic and the expected regret.
    """
    rng = np.random.default_rng(seed)
    names, rates = list(RATES), np.array(list(RATES.values()))
    n, s = np.zeros(2, dtype=np.int64), np.zeros(2, dtype=np.int64)
    sent = np.zeros((ROUNDS, 2), dtype=np.int64)
    weights = dict.fromkeys(names, 0.5)
    for r in range(ROUNDS):
        sent[r] = rng.multinomial(UNITS, [weights[a] for a in names])
        s += rng.binomial(sent[r], rates)
        n += sent[r]
        weights = bandit_weights(config, [binary(a, int(n[i]), int(s[i])) for i, a in enumerate(names)], rng)
    tail = sent[-10:].sum(axis=0)
    return weights["b"], tail[1] / tail.sum(), regret(RATES, dict(zip(names, map(int, n), strict=True)))


def test_thompson_moves_traffic_to_the_better_arm_and_beats_a_fixed_split() -> None:
    config = BanditConfig(draws=2_000)
    results = [simulate_binary(config, seed) for seed in SEEDS]
    converged = sum(w > 0.8 and share > 0.7 for w, share, _ in results)
    assert converged >= 9, results
    fixed_split = regret(RATES, {"a": ROUNDS * UNITS // 2, "b": ROUNDS * UNITS // 2})  # 600 reward units
    mean_regret = float(np.mean([r for *_, r in results]))  # about 37 with these seeds
    assert mean_regret < 0.2 * fixed_split, (mean_regret, fixed_split)


def test_epsilon_greedy_moves_traffic_to_the_better_arm() -> None:
    config = BanditConfig(algorithm="epsilon_greedy", epsilon=0.1)
    results = [simulate_binary(config, seed) for seed in SEEDS]
    # once the greedy choice is right the better arm gets 1 - 0.1 + 0.1 / 2
    converged = sum(w == pytest.approx(0.95) and share > 0.7 for w, share, _ in results)
    assert converged >= 9, results
    fixed_split = regret(RATES, {"a": ROUNDS * UNITS // 2, "b": ROUNDS * UNITS // 2})
    mean_regret = float(np.mean([r for *_, r in results]))  # about 110 with these seeds
    assert mean_regret < 0.5 * fixed_split, (mean_regret, fixed_split)


def test_thompson_gaussian_moves_traffic_to_the_better_arm() -> None:
    """Means 1.0 and 1.1, standard deviation 1: within 30 rounds of 1,000 requests the better arm takes over."""
    rounds, means = 30, np.array([1.0, 1.1])
    config = BanditConfig(reward="gaussian", draws=2_000)
    converged = 0
    for seed in SEEDS:
        rng = np.random.default_rng(seed)
        n, total, squares = np.zeros(2, dtype=np.int64), np.zeros(2), np.zeros(2)
        sent = np.zeros((rounds, 2), dtype=np.int64)
        weights = {"a": 0.5, "b": 0.5}
        for r in range(rounds):
            sent[r] = rng.multinomial(UNITS, [weights["a"], weights["b"]])
            for i in range(2):
                x = rng.normal(means[i], 1.0, size=sent[r, i])
                total[i] += x.sum()
                squares[i] += (x**2).sum()
            n += sent[r]
            arms = [ArmRewards(a, int(n[i]), float(total[i]), float(squares[i])) for i, a in enumerate("ab")]
            weights = bandit_weights(config, arms, rng)
        tail = sent[-10:].sum(axis=0)
        converged += weights["b"] > 0.8 and tail[1] / tail.sum() > 0.7
    assert converged >= 9
