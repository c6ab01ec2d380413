"""The audit's statistics (accounting.audit) against hand-computed cases and an exact toy
mechanism: randomized response, whose guesses are exactly as good as ε-DP allows."""

from __future__ import annotations

import math

import numpy as np
import pytest

import accounting
import accounting.audit
from accounting.audit import GUESS_FRACTIONS, p_value


def test_every_guess_right_gives_the_papers_ceiling():
    # δ = 0, r of r right: p-value = p^r with p = e^ε/(1+e^ε), so at β = 0.05 with r = 100
    # ε̂ = logit(0.05^(1/100)) = ln(0.970487 / 0.029513) = 3.4930 (by hand).
    assert accounting.epsilon_lower_bound(100, 100, 100, 0.0, 0.95) == pytest.approx(
        3.4930, abs=1e-4
    )
    # And it is rounded down, never up: the bound is rejected at ε̂ itself.
    bound = accounting.epsilon_lower_bound(100, 100, 100, 0.0, 0.95)
    assert p_value(100, 100, 100, bound, 0.0) <= 0.05


def test_random_guesses_prove_nothing():
    assert accounting.epsilon_lower_bound(1000, 1000, 500, 1e-5, 0.95) == 0.0
    assert accounting.epsilon_lower_bound(1000, 1000, 520, 1e-5, 0.95) == 0.0
    rng = np.random.default_rng(0)
    result = accounting.audit_scores(rng.random(2000), rng.random(2000) < 0.5, delta=1e-5)
    assert result.epsilon_lower < 0.2


def test_p_value_at_epsilon_zero_is_the_fair_coin_tail():
    # Independent of scipy: P[Bin(r, 1/2) ≥ v] by exact counting.
    r, v = 40, 27
    exact = sum(math.comb(r, k) for k in range(v, r + 1)) / 2**r
    assert p_value(100, r, v, 0.0, 0.0) == pytest.approx(exact, rel=1e-12)


def test_delta_only_weakens_the_bound():
    assert p_value(500, 200, 170, 1.0, 1e-3) > p_value(500, 200, 170, 1.0, 0.0)
    bounds = [accounting.epsilon_lower_bound(500, 200, 170, d, 0.95) for d in (0, 1e-5, 1e-3)]
    assert bounds[0] >= bounds[1] >= bounds[2]


def randomized_response(epsilon: float, m: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """m canaries through ε-DP randomized response: the released bit is the inclusion bit
    with probability e^ε/(1+e^ε). The score is the released bit."""
    included = rng.random(m) < 0.5
    truthful = rng.random(m) < 1 / (1 + math.exp(-epsilon))
    return np.where(truthful, included, ~included).astype(float), included


def test_randomized_response_is_measured_tightly():
    # Every guess counts (r = m): the bound approaches the true ε from below.
    rng = np.random.default_rng(1)
    for epsilon in (0.5, 1.0, 2.0):
        released, included = randomized_response(epsilon, 20_000, rng)
        correct = int((released.astype(bool) == included).sum())
        bound = accounting.epsilon_lower_bound(20_000, 20_000, correct, 0.0, 0.95)
        assert epsilon - 0.1 < bound <= epsilon


def test_the_bound_exceeds_the_truth_at_most_beta_of_the_time():
    # 200 audits of ε = 1 randomized response at 90 % confidence: ε̂ > 1 in ≤ 10 % of them
    # (with slack for 200 draws: the binomial 99.9 % quantile of 20 expected is 34).
    rng = np.random.default_rng(2)
    above = 0
    for _ in range(200):
        released, included = randomized_response(1.0, 200, rng)
        result = accounting.audit_scores(
            released, included, delta=0.0, confidence=0.9, gaussian=False
        )
        above += result.epsilon_lower > 1.0
    assert above <= 34


def test_perfect_scores_reach_the_ceiling_and_ties_never_use_the_secret():
    rng = np.random.default_rng(3)
    included = rng.permutation(np.arange(1000) < 500)  # exactly half in: every guess can be right
    perfect = accounting.audit_scores(included.astype(float) + rng.random(1000) * 0.1, included,
                                      delta=1e-5)  # fmt: skip
    assert perfect.correct == perfect.guesses
    assert perfect.epsilon_lower == pytest.approx(accounting.max_lower_bound(1000, 1e-5, 0.95))
    assert perfect.verdict(3.0) == "VIOLATION" and perfect.verdict(10.0) == "consistent"
    # Equal scores carry no information: guesses among ties are random.
    tied = accounting.audit_scores(np.zeros(1000), included, delta=1e-5)
    assert tied.epsilon_lower < 0.5


def test_the_guess_grid_is_paid_for():
    # Each of the grid's k is tested at β / |grid| (union bound): the same guesses bound ε
    # lower than one test at β would.
    m, k = 1000, round(GUESS_FRACTIONS[-1] * 1000)
    one_test = accounting.epsilon_lower_bound(m, 2 * k, 2 * k, 1e-5, 0.95)
    assert accounting.max_lower_bound(m, 1e-5, 0.95) < one_test


@pytest.mark.parametrize(
    "args",
    [(10, 11, 5, 1.0, 0.0), (10, 5, 6, 1.0, 0.0), (10, 5, 3, -1.0, 0.0), (10, 5, 3, 1.0, 2.0)],
)
def test_impossible_counts_are_refused(args):
    with pytest.raises(accounting.AccountingError):
        p_value(*args)
    with pytest.raises(accounting.AccountingError, match="confidence"):
        accounting.epsilon_lower_bound(10, 5, 3, 0.0, 1.0)


@pytest.mark.parametrize("sigma", [0.5, 1.0, 2.0, 4.0])
def test_gaussian_profile_matches_dp_accountings_gaussian_mechanism(sigma):
    # A Gaussian mechanism of sensitivity 1 and noise σ is exactly (1/σ)-GDP: its ε at δ by
    # dp_accounting's PLD accountant is an independent reference for gaussian_epsilon.
    import dp_accounting

    pld = dp_accounting.pld.PLDAccountant()
    pld.compose(dp_accounting.GaussianDpEvent(sigma))
    expected = pld.get_epsilon(1e-5)
    assert accounting.audit.gaussian_epsilon(1 / sigma, 1e-5) == pytest.approx(expected, rel=1e-6)


def test_gaussian_estimate_is_valid_on_a_gaussian_mechanism():
    # Scores of an exactly μ-GDP mechanism (the canary shifts a unit Gaussian by μ): μ̂
    # exceeds μ in at most β of the audits (90 % confidence, 30 audits: 3 expected, 9 is the
    # binomial 99.9 % quantile); its ε is never far below the ε̂ of the verdict.
    rng = np.random.default_rng(4)
    above = 0
    for _ in range(30):
        included = rng.random(400) < 0.5
        scores = included * 1.0 + rng.normal(size=400)
        result = accounting.audit_scores(scores, included, delta=1e-5, confidence=0.9)
        above += result.mu_lower > 1.0
        assert result.epsilon_lower_gaussian >= result.epsilon_lower - 0.2
    assert above <= 9
