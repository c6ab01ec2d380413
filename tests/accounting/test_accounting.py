"""Trial-level accounting: golden values from papers, a second method, calibration round trips."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent

from accounting import (
    AccountingError,
    calibrate_noise_multiplier,
    dp_sgd_event,
    epsilon,
    round_up,
)


def test_de_et_al_wrn_cifar10_eps1_recipe():
    # De et al. 2022 (jax_privacy config cifar10_wrn_16_4_eps1): batch 4096 of 50k, σ=10,
    # 875 updates, δ=1e-5 → ε ≈ 0.99 with the RDP accountant.
    event = dp_sgd_event(sample_rate=4096 / 50_000, noise_multiplier=10.0, steps=875)
    assert epsilon(event, delta=1e-5) == pytest.approx(0.99, abs=0.01)


@pytest.mark.parametrize(
    "sample_rate, noise_multiplier, steps",
    [(2048 / 60_000, 2.15, 1172), (0.01, 1.1, 10_000), (256 / 50_000, 0.8, 200), (0.5, 5.0, 3)],
)
def test_rdp_epsilon_matches_opacus_rdp_analysis(sample_rate, noise_multiplier, steps):
    # A second, independent implementation of the subsampled-Gaussian RDP bound (Opacus).
    ours = epsilon(
        dp_sgd_event(sample_rate=sample_rate, noise_multiplier=noise_multiplier, steps=steps),
        delta=1e-5,
    )
    orders = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 256))
    rdp = compute_rdp(q=sample_rate, noise_multiplier=noise_multiplier, steps=steps, orders=orders)
    theirs, _ = get_privacy_spent(orders=orders, rdp=rdp, delta=1e-5)
    assert ours == pytest.approx(theirs, rel=0.03)


def test_pld_is_tighter_than_rdp_for_the_same_mechanism():
    event = dp_sgd_event(sample_rate=2048 / 60_000, noise_multiplier=2.15, steps=1172)
    pld, rdp = epsilon(event, delta=1e-5, accountant="pld"), epsilon(event, delta=1e-5)
    assert 0 < pld < rdp


def test_epsilon_grows_with_steps_and_zero_steps_cost_nothing():
    values = [
        epsilon(dp_sgd_event(sample_rate=0.02, noise_multiplier=1.0, steps=t), delta=1e-5)
        for t in (0, 10, 100, 1000)
    ]
    assert values[0] == 0.0
    assert values == sorted(values) and len(set(values)) == 4


@settings(max_examples=15, deadline=None)
@given(
    sample_rate=st.floats(1e-3, 0.2),
    steps=st.integers(1, 3000),
    target=st.floats(0.3, 20.0),
)
def test_rdp_calibration_round_trip_never_exceeds_target(sample_rate, steps, target):
    sigma = calibrate_noise_multiplier(
        target_epsilon=target, delta=1e-5, sample_rate=sample_rate, steps=steps
    )
    event = dp_sgd_event(sample_rate=sample_rate, noise_multiplier=sigma, steps=steps)
    spent = epsilon(event, delta=1e-5)
    assert spent <= target
    if sigma > 0.1:  # not clamped at the floor: the result is tight, not merely valid
        assert spent >= target * 0.99


def test_pld_calibration_round_trip():
    sigma = calibrate_noise_multiplier(
        target_epsilon=3.0, delta=1e-5, sample_rate=2048 / 60_000, steps=1172, accountant="pld"
    )
    event = dp_sgd_event(sample_rate=2048 / 60_000, noise_multiplier=sigma, steps=1172)
    assert 2.97 <= epsilon(event, delta=1e-5, accountant="pld") <= 3.0
    rdp_sigma = calibrate_noise_multiplier(
        target_epsilon=3.0, delta=1e-5, sample_rate=2048 / 60_000, steps=1172
    )
    assert sigma < rdp_sigma  # the tighter accountant needs less noise


def test_generous_target_returns_the_floor_sigma_and_still_meets_it():
    sigma = calibrate_noise_multiplier(target_epsilon=1e6, delta=1e-5, sample_rate=0.01, steps=10)
    assert sigma == 0.1


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"target_epsilon": 0.0}, "target_epsilon"),
        ({"target_epsilon": -1.0}, "target_epsilon"),
        ({"delta": 0.0}, "delta"),
        ({"delta": 1.0}, "delta"),
        ({"sample_rate": 0.0}, "sample_rate"),
        ({"sample_rate": 1.5}, "sample_rate"),
        ({"steps": 0}, "at least one step"),
        ({"accountant": "moments"}, "accountant"),
    ],
)
def test_calibration_rejects_impossible_parameters_with_a_sentence(kwargs, fragment):
    args = {"target_epsilon": 1.0, "delta": 1e-5, "sample_rate": 0.01, "steps": 100}
    with pytest.raises(AccountingError, match=fragment):
        calibrate_noise_multiplier(**{**args, **kwargs})


def test_event_rejects_bad_noise():
    with pytest.raises(AccountingError, match="noise_multiplier"):
        dp_sgd_event(sample_rate=0.1, noise_multiplier=0.0, steps=1)


@given(st.floats(0, 1e6, allow_nan=False), st.integers(0, 6))
def test_round_up_never_rounds_down(value, digits):
    shown = round_up(value, digits)
    assert shown >= value
    assert shown - value <= 10.0**-digits + 1e-9 * max(1.0, value)
    assert round_up(math.inf) == math.inf
