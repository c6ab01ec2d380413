"""The audit as a regression test of our privacy code: white-box gradient canaries on a small
CNN find each clipping engine consistent with its accounted ε, and find a VIOLATION when the
mechanism is broken (noise off, noise 10× too small, clipping skipped for one layer): the
proof that the auditor can fail. Input-space canaries run through the whole trainer too.

Runs are reproducible (reproducible=true): the same canaries, sampling and noise every time,
so each verdict here is fixed, not a 95 %-likely outcome."""

from __future__ import annotations

import pytest

from tests.helpers import break_noise, skip_clipping_of_largest_layer, tiny
from trainers import audit_trial, make_config

EPSILON = 2.0
CANARIES = 500


def audited(engine: str, kind: str = "gradient", **overrides) -> dict:
    # 1000 training examples, q = 0.25, 20 steps: an audit with 500 canaries can show up to
    # ε̂ ≈ 4.6, so a mechanism that leaks much more than its ε = 2 cannot hide.
    config = make_config(tiny(**{
        "synthetic_examples": 1250, "batch_size": 250, "max_physical_batch_size": 125,
        "epochs": 5, "clipping": engine, "target_epsilon": EPSILON, "delta": 1e-5,
        "reproducible": True, **overrides,
    }))  # fmt: skip
    return audit_trial(config, kind=kind, canaries=CANARIES)


@pytest.fixture(scope="module")
def correct_audits() -> dict[str, dict]:
    """The audit of the correct mechanism, on each engine."""
    return {engine: audited(engine) for engine in ("fast", "opacus")}


@pytest.mark.parametrize("engine", ["fast", "opacus"])
def test_a_correct_mechanism_is_consistent_with_its_accounted_epsilon(correct_audits, engine):
    result = correct_audits[engine]
    assert result["engine"] == engine and result["epsilon"] == pytest.approx(EPSILON, rel=1e-6)
    assert result["verdict"] == "consistent"
    assert 0 <= result["epsilon_lower"] <= EPSILON
    # The audit could have shown a violation: its ceiling is above the accounted ε.
    assert result["max_epsilon_lower"] > 2 * EPSILON
    assert result["canaries"] == CANARIES and 0 < result["correct"] <= result["guesses"]


@pytest.mark.parametrize("engine", ["fast", "opacus"])
@pytest.mark.parametrize(
    "fault",
    ["noise off", "noise 10x too small", "clipping skipped for one layer"],
)
def test_a_broken_mechanism_is_a_violation(monkeypatch, engine, fault):
    if fault == "noise off":
        break_noise(monkeypatch, 0.0)
    elif fault == "noise 10x too small":
        break_noise(monkeypatch, 0.1)
    else:
        skip_clipping_of_largest_layer(monkeypatch)
    result = audited(engine)
    assert result["verdict"] == "VIOLATION", result
    assert result["epsilon_lower"] > result["epsilon"]


@pytest.mark.parametrize(
    ("engine", "setting"),
    [("opacus", {"augmult": 2}), ("fast", {"trainable_layers": "head", "feature_cache": False}),
     ("fast", {"max_physical_batch_size": 40})],
)  # fmt: skip
def test_augmult_layer_selection_and_physical_batches_stay_consistent(engine, setting):
    # Canaries join the logical step once, whatever its physical batches and views, and live
    # in the trainable parameters only.
    result = audited(engine, **setting)
    assert result["verdict"] == "consistent" and result["epsilon_lower"] <= EPSILON


def test_both_engines_audit_the_same_canaries_sampling_and_noise(correct_audits):
    # A reproducible run: the fast engine and Opacus sample and add noise identically, so
    # their canary scores agree to float precision and their audits exactly.
    fast, opacus = correct_audits["fast"], correct_audits["opacus"]
    for key in ("epsilon_lower", "guesses", "correct"):
        assert fast[key] == opacus[key]


def test_input_canaries_run_through_the_whole_trainer():
    # Black-box canaries: noise images with random labels in the training set, with
    # augmentation multiplicity and physical batches; weak, but never above ε.
    result = audited("fast", kind="input", augmult=2)
    assert result["kind"] == "input" and result["verdict"] == "consistent"
    # The included canaries joined the 1000 training examples: q = B / n fell.
    assert 250 / 1500 < result["sample_rate"] < 250 / 1000
