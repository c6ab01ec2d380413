"""Search-level ε: composition, random stopping (Papernot & Steinke), planning."""

from __future__ import annotations

import math

import numpy as np
import pytest
from dp_accounting import dp_event
from dp_accounting.rdp import RdpAccountant
from hypothesis import given, settings
from hypothesis import strategies as st
from opacus.accountants import PRVAccountant, RDPAccountant

from accounting import AccountingError, dp_sgd_event, epsilon
from accounting.mechanism import trial_event
from accounting.rdp_curves import pointwise_max_rdp
from accounting.search_budget import max_trials, plan_noise_multiplier
from accounting.selection import TrialsDistribution, repeat_and_select_epsilon, search_epsilon

DE_ET_AL = {"sample_rate": 4096 / 50_000, "noise_multiplier": 10.0, "steps": 875}


# --- single runs against published numbers and Opacus's accountants -------------------------


def test_de_et_al_published_vector_rdp_and_pld():
    event = dp_sgd_event(**DE_ET_AL)
    assert epsilon(event, delta=1e-5) == pytest.approx(0.988, abs=5e-4)
    assert epsilon(event, delta=1e-5, accountant="pld") == pytest.approx(0.903, abs=5e-4)


@pytest.mark.parametrize(
    "q, sigma, steps, rel",
    [
        (4096 / 50_000, 10.0, 875, 1e-6),
        (2048 / 60_000, 2.15, 1172, 1e-6),
        (0.05, 2.0, 1000, 1e-6),
        (0.1, 5.0, 200, 1e-6),
        (0.02, 1.5, 3000, 1e-6),
        # Where the two libraries' series for fractional orders differ in the last digits
        # (or dp_accounting drops a non-converging order), dp_accounting's is the larger.
        (0.2, 3.0, 50, 1e-5),
        (0.01, 1.1, 10_000, 1e-5),
        (0.004, 0.9, 20_000, 1e-5),
    ],
)
def test_rdp_identical_to_opacus_and_pld_close_to_opacus_prv(q, sigma, steps, rel):
    event = dp_sgd_event(sample_rate=q, noise_multiplier=sigma, steps=steps)
    opacus_rdp = RDPAccountant()
    opacus_rdp.history = [(sigma, q, steps)]
    orders = RDPAccountant.DEFAULT_ALPHAS
    # Ours is the event (dp_sgd_event); dp_accounting computes its ε at Opacus's orders.
    from_our_event = RdpAccountant(orders=orders).compose(event).get_epsilon(1e-5)
    opacus = opacus_rdp.get_epsilon(1e-5)
    assert from_our_event == pytest.approx(opacus, rel=rel)
    assert from_our_event >= opacus * (1 - 1e-12)
    prv = PRVAccountant()
    prv.history = [(sigma, q, steps)]
    assert epsilon(event, delta=1e-5, accountant="pld") == pytest.approx(
        prv.get_epsilon(1e-5), rel=0.02
    )


@settings(max_examples=20, deadline=None)
@given(
    q=st.floats(1e-3, 0.3),
    sigma=st.floats(0.5, 10.0),
    steps=st.integers(1, 5000),
    factor=st.floats(1.1, 3.0),
)
def test_epsilon_grows_with_steps_and_rate_and_falls_with_noise(q, sigma, steps, factor):
    def eps(q_, sigma_, steps_):
        return epsilon(
            dp_sgd_event(sample_rate=q_, noise_multiplier=sigma_, steps=steps_), delta=1e-5
        )

    base = eps(q, sigma, steps)
    assert eps(q, sigma, int(steps * factor) + 1) >= base
    assert eps(min(1.0, q * factor), sigma, steps) >= base
    assert eps(q, sigma * factor, steps) <= base


# --- composition -----------------------------------------------------------------------------


def test_composition_of_identical_trials_equals_self_composition():
    trial = dp_sgd_event(sample_rate=0.01, noise_multiplier=1.0, steps=500)
    search = search_epsilon([trial] * 4, mode="composition", delta=1e-5)
    self_composed = epsilon(dp_event.SelfComposedDpEvent(trial, 4), delta=1e-5)
    assert search.epsilon == pytest.approx(self_composed, rel=1e-12)
    assert search.max_trial_epsilon == pytest.approx(epsilon(trial, delta=1e-5))
    assert search.num_trials == 4 and "every trial" in search.covers


def test_stopped_trials_count_the_steps_they_took():
    full = dp_sgd_event(sample_rate=0.01, noise_multiplier=1.0, steps=1000)
    stopped = dp_sgd_event(sample_rate=0.01, noise_multiplier=1.0, steps=100)
    with_stopped = search_epsilon([full, stopped], mode="composition", delta=1e-5).epsilon
    alone = search_epsilon([full], mode="composition", delta=1e-5).epsilon
    as_full = search_epsilon([full, full], mode="composition", delta=1e-5).epsilon
    assert alone < with_stopped < as_full


def test_a_non_private_trial_makes_the_search_non_private():
    private = trial_event([(0.01, 1.0, 100)])
    public = trial_event([(0.01, 0.0, 100)])
    assert search_epsilon([private, public], mode="composition", delta=1e-5).epsilon == math.inf


def test_none_mode_is_labelled_as_not_covering_the_search():
    trial = dp_sgd_event(sample_rate=0.01, noise_multiplier=1.0, steps=500)
    result = search_epsilon([trial] * 5, mode="none", delta=1e-5)
    assert result.epsilon == pytest.approx(epsilon(trial, delta=1e-5))
    assert "NOT the search" in result.covers


# --- random stopping -------------------------------------------------------------------------

DISTRIBUTIONS = [
    TrialsDistribution(kind="poisson", mean=10),
    TrialsDistribution(kind="geometric", mean=10),
    TrialsDistribution(kind="logarithmic", mean=10),
    TrialsDistribution(kind="negative-binomial", mean=10, eta=0.5),
]


@pytest.mark.parametrize("distribution", DISTRIBUTIONS, ids=lambda d: d.kind)
def test_pointwise_max_extension_equals_the_library_on_identical_trials(distribution):
    trial = dp_sgd_event(sample_rate=0.02, noise_multiplier=1.2, steps=800)
    library = epsilon(
        dp_event.RepeatAndSelectDpEvent(trial, distribution.mean, distribution.shape), delta=1e-5
    )
    # Two copies of one mechanism, written differently, force the extension's own path.
    twin = dp_event.ComposedDpEvent([trial])
    assert twin != trial
    extended = repeat_and_select_epsilon([trial, twin], distribution=distribution, delta=1e-5)
    assert extended == pytest.approx(library, rel=1e-9)


def test_pointwise_max_dominates_each_candidate_and_is_attained():
    small = dp_sgd_event(sample_rate=0.01, noise_multiplier=2.0, steps=100)
    large = dp_sgd_event(sample_rate=0.05, noise_multiplier=0.8, steps=2000)
    orders, curve = pointwise_max_rdp([small, large])
    _, small_curve = pointwise_max_rdp([small])
    _, large_curve = pointwise_max_rdp([large])
    assert np.all(curve >= small_curve) and np.all(curve >= large_curve)
    assert np.all((curve == small_curve) | (curve == large_curve))
    distribution = TrialsDistribution(kind="geometric", mean=5)
    mixed = repeat_and_select_epsilon([small, large], distribution=distribution, delta=1e-5)
    only_large = repeat_and_select_epsilon([large], distribution=distribution, delta=1e-5)
    assert mixed == pytest.approx(only_large, rel=1e-6)  # `large` dominates at every order


@pytest.mark.parametrize("eta", [1.0, 0.5, 2.0, 0.0])
def test_pure_dp_candidates_give_two_plus_eta_epsilon(eta):
    # Papernot & Steinke: ε-DP candidates, K ~ TNB(η) → (2+η)ε; geometric (η=1) is Liu &
    # Talwar's 3ε. The RDP bound reaches it as the Rényi order grows.
    eps0 = 0.5
    laplace = dp_event.LaplaceDpEvent(1 / eps0)
    orders = [2, 8, 32, 128, 1e3, 1e4, 1e5, 1e6]
    accountant = RdpAccountant(orders=orders).compose(
        dp_event.RepeatAndSelectDpEvent(laplace, 10, eta)
    )
    assert accountant.get_epsilon(1e-12) == pytest.approx((2 + eta) * eps0, rel=1e-4)
    assert accountant.get_epsilon(1e-12) >= (2 + eta) * eps0


@pytest.mark.parametrize(
    "kind, eta", [("geometric", None), ("logarithmic", None), ("negative-binomial", 0.5)]
)
def test_mean_one_gives_back_the_base_mechanism(kind, eta):
    trial = dp_sgd_event(sample_rate=0.01, noise_multiplier=1.0, steps=1000)
    base = epsilon(trial, delta=1e-5)
    once = repeat_and_select_epsilon(
        [trial], distribution=TrialsDistribution(kind=kind, mean=1.0, eta=eta), delta=1e-5
    )
    assert base <= once <= base * 1.02


@settings(max_examples=15, deadline=None)
@given(
    q=st.floats(1e-3, 0.1),
    sigma=st.floats(0.6, 5.0),
    steps=st.integers(1, 2000),
    mean=st.floats(1.0, 50.0),
    k=st.integers(1, 20),
    which=st.sampled_from(range(len(DISTRIBUTIONS))),
)
def test_search_epsilon_is_never_below_a_trial_epsilon(q, sigma, steps, mean, k, which):
    trial = dp_sgd_event(sample_rate=q, noise_multiplier=sigma, steps=steps)
    single = epsilon(trial, delta=1e-5)
    composed = search_epsilon([trial] * k, mode="composition", delta=1e-5)
    assert composed.epsilon >= single * (1 - 1e-9)
    base = DISTRIBUTIONS[which]
    distribution = TrialsDistribution(kind=base.kind, mean=mean, eta=base.eta)
    stopped = search_epsilon([trial], mode="random-stopping", delta=1e-5, distribution=distribution)
    assert stopped.epsilon >= single * (1 - 1e-9)


def test_random_stopping_asked_with_pld_is_accounted_with_rdp_and_says_so():
    trial = dp_sgd_event(sample_rate=0.01, noise_multiplier=1.0, steps=500)
    distribution = TrialsDistribution(kind="poisson", mean=4)
    asked_pld = search_epsilon(
        [trial], mode="random-stopping", delta=1e-5, accountant="pld", distribution=distribution
    )
    rdp = search_epsilon([trial], mode="random-stopping", delta=1e-5, distribution=distribution)
    assert asked_pld == rdp and asked_pld.accountant == "rdp"


def test_random_stopping_is_cheaper_than_composing_as_many_trials():
    trial = dp_sgd_event(sample_rate=0.01, noise_multiplier=1.0, steps=1000)
    distribution = TrialsDistribution(kind="geometric", mean=20)
    stopped = search_epsilon([trial], mode="random-stopping", delta=1e-5, distribution=distribution)
    composed = search_epsilon([trial] * 20, mode="composition", delta=1e-5)
    assert stopped.epsilon < composed.epsilon


@pytest.mark.parametrize("distribution", DISTRIBUTIONS, ids=lambda d: d.kind)
def test_drawn_number_of_trials_follows_the_distribution(distribution):
    rng = np.random.default_rng(0)
    draws = np.array([distribution.sample(rng) for _ in range(4000)])
    assert draws.mean() == pytest.approx(distribution.mean, rel=0.1)
    if distribution.kind != "poisson":
        assert draws.min() >= 1  # truncated at K ≥ 1


# --- planning ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "mode, extra",
    [
        ("composition", {"num_trials": 8}),
        ("random-stopping", {"distribution": TrialsDistribution(kind="poisson", mean=8)}),
        ("random-stopping", {"distribution": TrialsDistribution(kind="geometric", mean=8)}),
        ("none", {}),
    ],
)
def test_planned_sigma_meets_the_search_budget_tightly(mode, extra):
    q, steps = 0.02, 500
    sigma = plan_noise_multiplier(
        budget_epsilon=4.0, delta=1e-5, sample_rate=q, steps=steps, mode=mode, **extra
    )
    trial = dp_sgd_event(sample_rate=q, noise_multiplier=sigma, steps=steps)
    trials = [trial] * extra.get("num_trials", 1)
    spent = search_epsilon(
        trials, mode=mode, delta=1e-5, distribution=extra.get("distribution")
    ).epsilon
    assert 4.0 * 0.99 <= spent <= 4.0


def test_max_trials_is_the_largest_count_within_budget():
    kwargs = {"delta": 1e-5, "sample_rate": 0.01, "noise_multiplier": 1.5, "steps": 300}
    k = max_trials(budget_epsilon=4.0, **kwargs)
    trial = dp_sgd_event(sample_rate=0.01, noise_multiplier=1.5, steps=300)

    def cost(n):
        return epsilon(dp_event.SelfComposedDpEvent(trial, n), delta=1e-5)

    assert k >= 1 and cost(k) <= 4.0 < cost(k + 1)
    assert max_trials(budget_epsilon=1e-3, **kwargs) == 0


@pytest.mark.parametrize(
    "make, fragment",
    [
        (lambda: TrialsDistribution(kind="uniform", mean=5), "unknown trials distribution"),
        (lambda: TrialsDistribution(kind="poisson", mean=0.5), "≥ 1"),
        (lambda: TrialsDistribution(kind="negative-binomial", mean=5), "needs --eta"),
        (lambda: TrialsDistribution(kind="geometric", mean=5, eta=2.0), "negative-binomial only"),
        (lambda: search_epsilon([], mode="grid", delta=1e-5), "unknown search accounting"),
        (
            lambda: search_epsilon([], mode="random-stopping", delta=1e-5),
            "needs the distribution",
        ),
        (lambda: dp_sgd_event(sample_rate=0.1, noise_multiplier=1.0, steps=-1), "steps"),
        (lambda: plan_noise_multiplier(
            budget_epsilon=1.0, delta=1e-5, sample_rate=0.1, steps=10, mode="composition"
        ), "number of trials"),
    ],
)  # fmt: skip
def test_bad_search_parameters_are_clear_errors(make, fragment):
    with pytest.raises(AccountingError, match=fragment):
        make()
