"""Tests of Thompson-sampling posteriors, allocation weights, the policy and its config."""

from __future__ import annotations

import math

import numpy as np
import pytest
from numpy.testing import assert_allclose
from pydantic import ValidationError
from scipy import integrate, stats

from abplatform.assignment.allocation import Method, allocation_weights, allocation_weights_many
from abplatform.assignment.posteriors import BetaPosterior, GaussianPosterior, RewardStats
from abplatform.assignment.thompson import ThompsonDecision, ThompsonPolicy
from abplatform.config.models import ThompsonAssignmentConfig
from abplatform.domain import Decision

DRAWS = 20_000


def _mc_tol(p: float, draws: int = DRAWS) -> float:
    """Four standard errors of a Monte Carlo share: 4 * sqrt(p (1 - p) / draws)."""
    return 4.0 * math.sqrt(p * (1.0 - p) / draws)


def _p_a_beats_b(a: BetaPosterior, b: BetaPosterior) -> float:
    """P(X_a > X_b) = int_0^1 pdf_a(x) * cdf_b(x) dx for independent Beta arms."""
    value, _ = integrate.quad(
        lambda x: stats.beta.pdf(x, a.alpha, a.beta) * stats.beta.cdf(x, b.alpha, b.beta),
        0,
        1,
        points=[a.mean, b.mean],  # break the interval at the peaks so narrow pdfs are seen
        limit=200,
    )
    return float(value)


# --- posteriors -------------------------------------------------------------------------


def test_beta_update_hand_computed() -> None:
    # Beta(1, 1) + 3 successes of 10: alpha = 1 + 3 = 4, beta = 1 + (10 - 3) = 8.
    post = BetaPosterior().updated(RewardStats.binary(10, 3))
    assert (post.alpha, post.beta, post.n) == (4.0, 8.0, 10)
    # + 5 of 5: alpha = 4 + 5 = 9, beta = 8 + 0 = 8, n = 15; mean = 9 / 17.
    post = post.updated(RewardStats.binary(5, 5))
    assert (post.alpha, post.beta, post.n) == (9.0, 8.0, 15)
    assert post.mean == pytest.approx(9 / 17, rel=1e-12)


def test_beta_update_rejects_impossible_counts() -> None:
    with pytest.raises(ValueError, match=r"0 <= successes <= n, got successes=4.0, n=3"):
        BetaPosterior().updated(RewardStats(3, 4.0, 6.0))


def test_gaussian_update_hand_computed() -> None:
    # Prior mu=0, kappa=1, a=1, b=1; rewards 1, 2, 3: n=3, sum=6, sum_sq=14,
    # mean=2, S = 14 - 6**2/3 = 2.
    # kappa' = 1 + 3 = 4; mu' = (1*0 + 6) / 4 = 1.5; a' = 1 + 3/2 = 2.5;
    # b' = 1 + 2/2 + 1*3*(2 - 0)**2 / (2*4) = 1 + 1 + 1.5 = 3.5.
    prior = GaussianPosterior(mu=0.0, kappa=1.0, a=1.0, b=1.0)
    post = prior.updated(RewardStats(3, 6.0, 14.0))
    assert_allclose([post.mu, post.kappa, post.a, post.b], [1.5, 4.0, 2.5, 3.5], rtol=1e-12)
    assert post.n == 3


def test_gaussian_batched_updates_equal_pooled_update() -> None:
    # Conjugacy: updating with [1] then [2, 3] must equal one update with [1, 2, 3].
    prior = GaussianPosterior(mu=0.0, kappa=1.0, a=1.0, b=1.0)
    split = prior.updated(RewardStats(1, 1.0, 1.0)).updated(RewardStats(2, 5.0, 13.0))
    pooled = prior.updated(RewardStats(3, 6.0, 14.0))
    assert_allclose(
        [split.mu, split.kappa, split.a, split.b],
        [pooled.mu, pooled.kappa, pooled.a, pooled.b],
        rtol=1e-12,
    )


def test_reward_stats_rejects_inconsistent_sums() -> None:
    # sum_sq must be >= sum**2 / n (Cauchy-Schwarz): 2 rewards summing to 4 need sum_sq >= 8.
    with pytest.raises(ValueError, match="sum of squares must be at least"):
        RewardStats(2, 4.0, 7.0)


# --- allocation weights -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (BetaPosterior(31, 71), BetaPosterior(41, 81)),
        (BetaPosterior(4, 8), BetaPosterior(9, 8)),
        (BetaPosterior(101, 901), BetaPosterior(111, 891)),
    ],
)
def test_p_best_two_beta_arms_matches_integral(a: BetaPosterior, b: BetaPosterior) -> None:
    exact = _p_a_beats_b(a, b)
    weights = allocation_weights([a, b], draws=DRAWS, rng=np.random.default_rng(7))
    assert abs(weights[0] - exact) <= _mc_tol(exact)
    assert weights.sum() == pytest.approx(1.0, abs=1e-12)


def test_p_best_two_gaussian_arms_matches_integral() -> None:
    # Marginal of each mean is Student-t(2a, mu, sqrt(b / (a kappa))): integrate pdf_a * cdf_b.
    a = GaussianPosterior(mu=1.0, kappa=20.0, a=10.0, b=15.0)
    b = GaussianPosterior(mu=0.8, kappa=30.0, a=15.0, b=20.0)

    def marginal(p: GaussianPosterior) -> stats.rv_continuous:
        return stats.t(df=2 * p.a, loc=p.mu, scale=math.sqrt(p.b / (p.a * p.kappa)))

    ma, mb = marginal(a), marginal(b)
    exact, _ = integrate.quad(lambda x: ma.pdf(x) * mb.cdf(x), -np.inf, np.inf)
    weights = allocation_weights([a, b], draws=DRAWS, rng=np.random.default_rng(3))
    assert abs(weights[0] - exact) <= _mc_tol(exact)


def test_weights_sum_to_one_and_respect_floor() -> None:
    arms = [BetaPosterior(500, 500), BetaPosterior(400, 600), BetaPosterior(10, 990)]
    weights = allocation_weights(arms, draws=DRAWS, rng=np.random.default_rng(1), min_weight=0.05)
    assert weights.sum() == pytest.approx(1.0, abs=1e-12)
    assert weights.min() >= 0.05 - 1e-12
    # The hopeless arms have P(best) = 0 in every draw, so they sit exactly at the floor:
    # w = m + (1 - K m) * p = 0.05 + 0.85 * 0.
    assert_allclose(weights, [0.9, 0.05, 0.05], atol=1e-12)


def test_floor_too_large_raises_with_values() -> None:
    arms = [BetaPosterior()] * 3
    with pytest.raises(ValueError, match=r"min_weight=0\.4 \* arms=3 = 1\.2"):
        allocation_weights(arms, rng=np.random.default_rng(0), min_weight=0.4)


def test_top_two_two_arms_closed_form() -> None:
    # With two arms the challenger is always the other arm, so
    # psi_1 = beta * p_1 + (1 - beta) * p_2; with beta = 0.5 both arms get 1/2.
    arms = [BetaPosterior(31, 71), BetaPosterior(41, 81)]
    plain = allocation_weights(arms, draws=DRAWS, rng=np.random.default_rng(5))
    half = allocation_weights(arms, draws=DRAWS, rng=np.random.default_rng(5), top_two=True)
    assert_allclose(half, [0.5, 0.5], rtol=1e-12)
    beta = 0.8
    tt = allocation_weights(
        arms, draws=DRAWS, rng=np.random.default_rng(5), top_two=True, top_two_beta=beta
    )
    assert_allclose(tt, beta * plain + (1 - beta) * plain[::-1], rtol=1e-12)


def test_top_two_with_a_certain_leader_uses_runner_up() -> None:
    # Arm 0 wins every draw (p_0 = 1), so the challenger is the usual runner-up, arm 1:
    # psi = 0.5 * [1, 0, 0] + 0.5 * [0, 1, 0].
    arms = [BetaPosterior(990, 10), BetaPosterior(600, 400), BetaPosterior(10, 990)]
    weights = allocation_weights(arms, draws=DRAWS, rng=np.random.default_rng(2), top_two=True)
    assert_allclose(weights, [0.5, 0.5, 0.0], atol=1e-12)


def test_many_contexts_match_single_context() -> None:
    rows = [
        [BetaPosterior(31, 71), BetaPosterior(41, 81)],
        [BetaPosterior(4, 8), BetaPosterior(9, 8)],
        [BetaPosterior(1, 1), BetaPosterior(1, 1)],
    ]
    weights = allocation_weights_many(rows, draws=DRAWS, rng=np.random.default_rng(11))
    assert weights.shape == (3, 2)
    assert_allclose(weights.sum(axis=1), 1.0, atol=1e-12)
    for row, w in zip(rows, weights, strict=True):
        exact = _p_a_beats_b(row[0], row[1])
        assert abs(w[0] - exact) <= _mc_tol(exact)


def test_weights_are_deterministic_under_a_seed() -> None:
    arms = [BetaPosterior(31, 71), BetaPosterior(41, 81), BetaPosterior(35, 75)]
    first = allocation_weights(arms, draws=1000, rng=np.random.default_rng(9))
    second = allocation_weights(arms, draws=1000, rng=np.random.default_rng(9))
    assert_allclose(first, second, rtol=0, atol=0)


# --- policy -----------------------------------------------------------------------------


def _policy(**kwargs: object) -> ThompsonPolicy:
    return ThompsonPolicy(("a", "b"), draws=DRAWS, seed=4, **kwargs)  # type: ignore[arg-type]


def test_burn_in_keeps_equal_weights() -> None:
    policy = _policy(burn_in_units=50)
    policy.update({"a": RewardStats.binary(60, 30), "b": RewardStats.binary(10, 0)})
    assert_allclose(policy.weights(), [0.5, 0.5])
    assert policy.version == 1
    # Arm b reaches 50 units: weights adapt towards a (30/60 vs 0/50 successes).
    policy.update({"b": RewardStats.binary(40, 0)})
    assert policy.version == 2
    assert policy.weights()[0] > 0.99


def test_propensity_is_the_weight_in_force() -> None:
    policy = _policy()
    policy.update({"a": RewardStats.binary(100, 12), "b": RewardStats.binary(100, 10)})
    weights = policy.weights()
    for i in range(200):
        decision = policy.assign(f"u{i}")
        assert isinstance(decision, Decision)
        assert isinstance(decision, ThompsonDecision)
        assert decision.bucket is None
        assert decision.weight_version == policy.version == 1
        assert decision.propensity == weights[policy.variant_keys.index(decision.variant)]


def test_assign_inverts_the_weight_cdf() -> None:
    policy = _policy()
    policy.update({"a": RewardStats.binary(100, 12), "b": RewardStats.binary(100, 10)})
    w_a = policy.weights()[0]
    assert policy.assign("x", u=w_a * 0.999).variant == "a"
    assert policy.assign("y", u=min(w_a * 1.001, 0.999999)).variant == "b"
    with pytest.raises(ValueError, match=r"u must lie in \[0, 1\), got 1.0"):
        policy.assign("z", u=1.0)


def test_sticky_unit_keeps_its_first_decision() -> None:
    policy = _policy(sticky=True)
    first = policy.assign("unit-1", u=0.1)
    policy.update({"a": RewardStats.binary(100, 0), "b": RewardStats.binary(100, 50)})
    again = policy.assign("unit-1", u=0.1)
    assert again == first
    assert again.variant == "a" and again.weight_version == 0
    # A fresh unit with the same u follows the new weights (now almost all on b).
    assert policy.assign("unit-2", u=0.1).variant == "b"


def test_non_sticky_redraws() -> None:
    policy = _policy(sticky=False)
    assert policy.assign("unit-1", u=0.1).variant == "a"
    assert policy.assign("unit-1", u=0.9).variant == "b"


def test_policy_is_deterministic_under_a_seed() -> None:
    def run() -> tuple[list[float], list[str]]:
        policy = ThompsonPolicy(("a", "b", "c"), draws=2000, seed=123)
        policy.update({k: RewardStats.binary(50, s) for k, s in zip("abc", (5, 7, 6), strict=True)})
        return list(policy.weights()), [policy.assign(f"u{i}").variant for i in range(100)]

    assert run() == run()


def test_contexts_have_their_own_posteriors() -> None:
    policy = ThompsonPolicy(("a", "b"), draws=DRAWS, seed=1, context_key="scene")
    policy.update({"a": RewardStats.binary(200, 80), "b": RewardStats.binary(200, 20)}, "home_page")
    assert policy.weights("home_page")[0] > 0.99
    assert_allclose(policy.weights("cart_page"), [0.5, 0.5])
    assert policy.assign("u1", {"scene": "home_page"}, u=0.5).variant == "a"
    assert policy.assign("u1", {"scene": "cart_page"}, u=0.6).variant == "b"
    with pytest.raises(ValueError, match=r"needs context\['scene'\]"):
        policy.assign("u2")


def test_assign_batch_matches_assign() -> None:
    policy = _policy(sticky=True)
    batch = policy.assign_batch(["u1", "u2", "u3"])
    singles = [policy.assign(u) for u in ("u1", "u2", "u3")]
    assert [policy.variant_keys[i] for i in batch.variant_index] == [d.variant for d in singles]
    assert_allclose(batch.propensity, [d.propensity for d in singles])


def test_update_rejects_unknown_arms() -> None:
    with pytest.raises(ValueError, match=r"unknown arms \['z'\]; known: \['a', 'b'\]"):
        _policy().update({"z": RewardStats.binary(1, 1)})


def test_gaussian_policy_prefers_the_better_mean() -> None:
    policy = ThompsonPolicy(("a", "b"), reward="gaussian", draws=DRAWS, seed=0)
    # a: 100 rewards mean 1.0, variance 1; b: 100 rewards mean 0.5, variance 1.
    # sum_sq = n * (var + mean**2): a -> 100 * 2 = 200, b -> 100 * 1.25 = 125.
    policy.update({"a": RewardStats(100, 100.0, 200.0), "b": RewardStats(100, 50.0, 125.0)})
    assert policy.weights()[0] > 0.99


# --- config -----------------------------------------------------------------------------


def _config(**overrides: object) -> ThompsonAssignmentConfig:
    data: dict[str, object] = {"type": "thompson", "reward_metric": "ctr"}
    data.update(overrides)
    return ThompsonAssignmentConfig.model_validate(data)


def test_config_defaults_and_policy() -> None:
    config = _config(min_weight=0.1, context="scene", burn_in_units=10)
    policy = ThompsonPolicy.from_config(config, ["a", "b", "c"])
    assert policy.min_weight == 0.1 and policy.context_key == "scene"
    assert config.sticky is True and config.top_two_beta == 0.5


def test_config_floor_too_large_for_arms() -> None:
    config = _config(min_weight=0.3)
    with pytest.raises(ValueError, match=r"min_weight=0\.3 \* arms=4 = 1\.2; lower min_weight"):
        ThompsonPolicy.from_config(config, ["a", "b", "c", "d"])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"update_evry": 10}, "update_evry\n  Extra inputs are not permitted"),
        ({"type": "hash"}, "Input should be 'thompson'"),
        ({"min_weight": 1.5}, "min_weight\n  Input should be less than 1"),
        ({"update_every": 0}, "update_every\n  Input should be greater than or equal to 1"),
        ({"context": "user"}, "context\n  Input should be 'scene'"),
        ({"draws": 10}, "draws\n  Input should be greater than or equal to 100"),
        ({"reward_metric": "bad metric"}, "reward_metric\n  String should match pattern"),
    ],
)
def test_config_rejects_bad_values(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError) as info:
        _config(**overrides)
    assert message in str(info.value)


# --- quadrature -------------------------------------------------------------------------

# The quadrature's documented accuracy: about 1e-3 absolute (trapezoid, node spacing 0.41 sd,
# error O(h^2)); 2e-3 leaves room for the flat Beta(1, 1) prior, the worst resolved case.
QUAD_TOL = 2e-3


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (BetaPosterior(31, 71), BetaPosterior(41, 81)),
        (BetaPosterior(4, 8), BetaPosterior(9, 8)),
        (BetaPosterior(1, 1), BetaPosterior(3, 2)),
        (BetaPosterior(10001, 90001), BetaPosterior(11, 91)),
    ],
)
def test_quadrature_two_beta_arms_matches_integral(a: BetaPosterior, b: BetaPosterior) -> None:
    exact = _p_a_beats_b(a, b)
    weights = allocation_weights([a, b], rng=np.random.default_rng(0), method="quadrature")
    assert abs(weights[0] - exact) <= QUAD_TOL
    assert weights.sum() == pytest.approx(1.0, abs=1e-12)


def test_quadrature_agrees_with_monte_carlo_on_many_arms() -> None:
    rows = [[BetaPosterior(50 + 3 * i + c, 450 - 3 * i) for i in range(5)] for c in range(0, 20, 5)]
    quad = allocation_weights_many(rows, rng=np.random.default_rng(0), method="quadrature")
    mc = allocation_weights_many(rows, draws=DRAWS, rng=np.random.default_rng(8))
    tol = 4 * np.sqrt(quad * (1 - quad) / DRAWS) + QUAD_TOL
    assert np.all(np.abs(quad - mc) <= tol)


def test_quadrature_rejects_what_it_cannot_do() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="does not support top_two"):
        allocation_weights([BetaPosterior()] * 2, rng=rng, method="quadrature", top_two=True)
    with pytest.raises(ValueError, match="needs BetaPosterior arms only"):
        allocation_weights([GaussianPosterior()] * 2, rng=rng, method="quadrature")
    with pytest.raises(ValueError, match="alpha >= 1 and beta >= 1"):
        allocation_weights([BetaPosterior(0.5, 0.5)] * 2, rng=rng, method="quadrature")
    with pytest.raises(
        ValueError, match="method must be 'auto', 'monte_carlo' or 'quadrature', got 'x'"
    ):
        allocation_weights([BetaPosterior()] * 2, rng=rng, method="x")  # type: ignore[arg-type]


# --- batched updates across contexts, P(best), the default method -------------------------


def test_update_many_is_one_version_and_matches_single_updates() -> None:
    feedback = {
        "home_page": {"a": RewardStats.binary(200, 30), "b": RewardStats.binary(200, 20)},
        "cart_page": {"a": RewardStats.binary(50, 5), "b": RewardStats.binary(50, 9)},
    }
    many = ThompsonPolicy(("a", "b"), context_key="scene")
    many.update_many(feedback)
    assert many.version == 1  # all contexts of one update share the version
    for context, batch in feedback.items():
        single = ThompsonPolicy(("a", "b"), context_key="scene")
        single.update(batch, context)
        # Quadrature (the default for Beta arms) is deterministic: equal to 1e-12.
        assert_allclose(many.weights(context), single.weights(context), rtol=0, atol=1e-12)


def test_default_method_is_quadrature_for_beta_and_matches_the_integral() -> None:
    a, b = BetaPosterior(31, 171), BetaPosterior(21, 181)
    policy = ThompsonPolicy(("a", "b"))
    policy.update({"a": RewardStats.binary(200, 30), "b": RewardStats.binary(200, 20)})
    # Quadrature's absolute error is about 1e-3 (see allocation_weights_many).
    assert policy.p_best()[0] == pytest.approx(_p_a_beats_b(a, b), abs=2e-3)
    assert_allclose(policy.weights(), policy.p_best())  # no floor, no top-two


def test_policy_weights_sum_to_one_and_respect_the_floor() -> None:
    keys = ("a", "b", "c", "d")
    methods: tuple[Method, ...] = ("auto", "monte_carlo")
    for method in methods:
        policy = ThompsonPolicy(keys, min_weight=0.05, draws=DRAWS, method=method)
        policy.update({k: RewardStats.binary(500, 50 + 20 * i) for i, k in enumerate(keys)})
        weights, p_best = policy.weights(), policy.p_best()
        assert weights.sum() == pytest.approx(1.0, abs=1e-12)
        assert weights.min() >= 0.05 - 1e-12
        # The floor is the affine shrink w = m + (1 - K m) p of P(best).
        assert_allclose(weights, 0.05 + (1 - 4 * 0.05) * p_best, atol=1e-12)


def test_burn_in_is_per_context() -> None:
    policy = ThompsonPolicy(("a", "b"), burn_in_units=20, context_key="scene")
    policy.update_many(
        {
            "home_page": {"a": RewardStats.binary(30, 15), "b": RewardStats.binary(30, 0)},
            "cart_page": {"a": RewardStats.binary(30, 15), "b": RewardStats.binary(10, 0)},
        }
    )
    assert policy.weights("home_page")[0] > 0.99
    assert_allclose(policy.weights("cart_page"), [0.5, 0.5])  # b has 10 < 20 units
    assert policy.in_burn_in("cart_page") and not policy.in_burn_in("home_page")
    assert policy.p_best("cart_page")[0] > 0.9  # P(best) is still reported during burn-in


def test_set_posteriors_takes_the_stored_version() -> None:
    policy = ThompsonPolicy(("a", "b"))
    policy.set_posteriors({None: [BetaPosterior(51, 51, 100), BetaPosterior(2, 100, 100)]}, 7)
    assert policy.version == 7 and policy.weights()[0] > 0.99
    assert policy.assign("u").weight_version == 7
    with pytest.raises(ValueError, match="has 1 posteriors for 2 arms"):
        policy.set_posteriors({None: [BetaPosterior()]})
    with pytest.raises(ValueError, match="must be 2 shares summing to 1"):
        policy.set_weights(None, [0.7, 0.7])


def test_choose_arms_by_rows() -> None:
    weights = np.array([[0.2, 0.8], [0.9, 0.1]])
    u = np.array([[0.1, 0.1], [0.5, 0.95]])  # (steps, rows)
    from abplatform.assignment.thompson import choose_arms

    assert choose_arms(np.broadcast_to(weights, (2, 2, 2)), u).tolist() == [[0, 0], [1, 1]]


def test_seeded_monte_carlo_policies_agree() -> None:
    def run() -> list[float]:
        policy = ThompsonPolicy(("a", "b", "c"), method="monte_carlo", draws=500, seed=5)
        policy.update({k: RewardStats.binary(20, s) for k, s in zip("abc", (3, 4, 5), strict=True)})
        return list(policy.weights())

    assert run() == run()
