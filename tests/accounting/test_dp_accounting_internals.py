"""The private dp_accounting functions this project relies on still behave as it assumes.

accounting/dp_accounting_internals.py is the only module allowed to touch private
dp_accounting names. These tests pin what it assumes about them (and the few public
properties the RDP curves read), so a dp_accounting upgrade that breaks an assumption fails
here with a message naming the installed version instead of silently changing an ε.
"""

from __future__ import annotations

import ast
import inspect
import math
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
from dp_accounting import dp_event
from dp_accounting.pld import PLDAccountant
from dp_accounting.rdp import RdpAccountant, compute_epsilon
from dp_accounting.rdp import rdp_privacy_accountant as rdp_lib

from accounting.dp_accounting_internals import (
    TINY_RDP,
    repeat_and_select_rdp,
    truncated_negative_binomial_gamma,
)
from accounting.rdp_curves import RdpCurve
from tests.helpers import ROOT

VERSION = metadata.version("dp-accounting")
CHECKED = (
    f"dp_accounting {VERSION} differs from the 0.6.x that accounting/dp_accounting_internals.py "
    "was checked against; re-check that module before widening pyproject.toml's range"
)
DELTA = 1e-5
EVENT = dp_event.PoissonSampledDpEvent(0.01, dp_event.GaussianDpEvent(1.1))
SHAPES = [math.inf, 1.0, 0.0, 0.5, 2.5]  # Poisson, geometric, logarithmic, negative binomial


def _curve(event: dp_event.DpEvent) -> tuple[np.ndarray, np.ndarray]:
    accountant = RdpAccountant().compose(event)
    return accountant.orders, accountant.rdp


# --- the private functions exist, with the signatures the wrappers call ----------------------


@pytest.mark.parametrize(
    "name, parameters",
    [
        ("_compute_rdp_repeat_and_select", ["orders", "rdp", "mean", "shape"]),
        ("_gamma_truncated_negative_binomial", ["shape", "mean", "tolerance"]),
    ],
)
def test_private_function_signature(name, parameters):
    function = getattr(rdp_lib, name, None)
    assert callable(function), f"{CHECKED}: rdp_privacy_accountant.{name} is gone."
    signature = inspect.signature(function)
    assert list(signature.parameters) == parameters, (
        f"{CHECKED}: rdp_privacy_accountant.{name}{signature} no longer takes {parameters}."
    )
    if name == "_gamma_truncated_negative_binomial":
        assert signature.parameters["tolerance"].default == 1e-9, (
            f"{CHECKED}: γ's default bisection tolerance changed ({signature})."
        )


# --- the public curve of an accountant (what RdpCurve reads) ----------------------------------


def test_accountant_curve_properties_convert_to_its_epsilon():
    accountant = RdpAccountant().compose(EVENT)
    orders, rdp = accountant.orders, accountant.rdp
    assert orders.shape == rdp.shape and np.all(rdp > 0), (
        f"{CHECKED}: RdpAccountant.orders / .rdp no longer give the composed curve."
    )
    assert np.array_equal(RdpAccountant().orders, np.asarray(rdp_lib.DEFAULT_RDP_ORDERS)), (
        f"{CHECKED}: RdpAccountant's default orders are no longer DEFAULT_RDP_ORDERS."
    )
    assert compute_epsilon(orders, rdp, DELTA)[0] == accountant.get_epsilon(DELTA), (
        f"{CHECKED}: compute_epsilon on the accountant's curve differs from its get_epsilon."
    )
    curve = RdpCurve.of(EVENT)
    assert np.array_equal(curve.orders, orders) and np.array_equal(curve.values, rdp)
    assert curve.epsilon(DELTA) == accountant.get_epsilon(DELTA)


def test_accountant_composition_adds_curves():
    # RdpCurve composes by adding curves and self-composes by scaling them, as the accountant.
    _, one = _curve(EVENT)
    _, three = _curve(dp_event.SelfComposedDpEvent(EVENT, 3))
    _, both = _curve(dp_event.ComposedDpEvent([EVENT, dp_event.GaussianDpEvent(5.0)]))
    _, gaussian = _curve(dp_event.GaussianDpEvent(5.0))
    assert np.allclose(three, 3 * one, rtol=1e-12, atol=0), (
        f"{CHECKED}: self-composition no longer multiplies the RDP curve."
    )
    assert np.allclose(both, one + gaussian, rtol=1e-12, atol=0), (
        f"{CHECKED}: composition no longer adds RDP curves."
    )


# --- repeat and select: the wrapper against the public event and against the theorems --------


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("mean", [1.0, 3.0, 10.0])
def test_repeat_and_select_matches_public_event(shape, mean):
    orders, rdp = _curve(EVENT)
    ours = repeat_and_select_rdp(orders, rdp, mean=mean, shape=shape)
    public = RdpAccountant().compose(dp_event.RepeatAndSelectDpEvent(EVENT, mean, shape))
    assert isinstance(ours, np.ndarray) and ours.dtype == np.float64
    assert np.array_equal(ours, public.rdp), (
        f"{CHECKED}: the repeat-and-select curve (mean {mean}, shape {shape}) differs from "
        "RdpAccountant's RepeatAndSelectDpEvent."
    )
    assert compute_epsilon(orders, ours, DELTA)[0] == public.get_epsilon(DELTA)


@pytest.mark.parametrize("shape", SHAPES)
def test_repeat_and_select_matches_papernot_steinke(shape):
    """Theorem 2 (truncated negative binomial, then monotonicity in the order) and Theorem 6
    (Poisson, as is) of arXiv 2110.03620, written out independently of dp_accounting."""
    mean = 8.0
    orders, rdp = _curve(dp_event.SelfComposedDpEvent(EVENT, 50))
    if math.isinf(shape):
        bound = np.array(
            [
                eps
                + mean * rdp_lib.compute_delta(orders, rdp, math.log1p(1 / (lam - 1)))[0]
                + math.log(mean) / (lam - 1)
                for lam, eps in zip(orders, rdp, strict=True)
            ]
        )
    else:
        gamma = truncated_negative_binomial_gamma(shape=shape, mean=mean)
        best = np.min((1 - 1 / orders) * rdp + math.log(1 / gamma) / orders)
        bound = rdp + (1 + shape) * best + math.log(mean) / (orders - 1)
        bound = np.minimum.accumulate(bound[::-1])[::-1]  # ε(λ) ≤ ε(λ') for λ ≤ λ'
    ours = repeat_and_select_rdp(orders, rdp, mean=mean, shape=shape)
    assert np.allclose(ours, bound, rtol=1e-12, atol=1e-12), (
        f"{CHECKED}: the repeat-and-select curve (shape {shape}) no longer follows "
        "Papernot & Steinke's theorem."
    )


def test_repeat_and_select_of_a_curve_no_event_expresses():
    # The reason for the private call: the pointwise maximum of two candidates' curves.
    orders, first = _curve(dp_event.SelfComposedDpEvent(EVENT, 20))
    _, second = _curve(dp_event.GaussianDpEvent(8.0))
    bound = np.maximum(first, second)
    selected = repeat_and_select_rdp(orders, bound, mean=5.0, shape=1.0)
    for single in (first, second):
        assert np.all(selected >= repeat_and_select_rdp(orders, single, mean=5.0, shape=1.0))


@pytest.mark.parametrize("shape", [math.inf, 1.0, 0.5, 0.0])
@pytest.mark.parametrize(
    "event",
    [
        dp_event.GaussianDpEvent(1e9),
        dp_event.PoissonSampledDpEvent(1 / 7, dp_event.GaussianDpEvent(1e9)),
    ],  # fmt: skip
    ids=["gaussian", "subsampled"],
)
def test_repeat_and_select_of_a_nearly_silent_trial_is_tiny_and_never_fails(shape, event):
    """A trial with σ = 1e9 (the planner's probe) has RDP ~1e-19, or a float error below 0
    when subsampled: dp_accounting's own code raises a math domain error on the first for
    Poisson K (exp(-r) rounds to 1) and reads the second as δ = 0; ours raises every r below
    TINY_RDP to it, which only overstates."""
    orders, rdp = _curve(event)
    assert rdp.min() < TINY_RDP
    selected = repeat_and_select_rdp(orders, rdp, mean=5.0, shape=shape)
    floor = repeat_and_select_rdp(orders, np.maximum(rdp, TINY_RDP), mean=5.0, shape=shape)
    assert np.all(np.isfinite(selected[orders > 1])) and np.array_equal(selected, floor)
    assert np.all(selected >= rdp)


# --- γ of the truncated negative binomial --------------------------------------------------


def _tnb_mean(gamma: float, shape: float) -> float:
    """E[K] of the truncated negative binomial (Papernot & Steinke 2022, Definition 1)."""
    if shape == 0:
        return (1 - gamma) / (gamma * math.log(1 / gamma))
    return shape * (1 - gamma) / (gamma * (1 - gamma**shape))


@pytest.mark.parametrize(
    "shape, gamma",
    [(1.0, 0.1), (2.0, 0.5), (0.0, 0.5), (0.5, 0.3), (3.0, 0.02)],
)
def test_truncated_negative_binomial_gamma_closed_form(shape, gamma):
    mean = _tnb_mean(gamma, shape)
    ours = truncated_negative_binomial_gamma(shape=shape, mean=mean)
    assert ours == pytest.approx(gamma, rel=1e-8), (
        f"{CHECKED}: γ of the truncated negative binomial (η={shape}, mean {mean}) is {ours}, "
        f"not {gamma}."
    )
    assert ours <= gamma * (1 + 1e-12), f"{CHECKED}: γ is no longer the conservative end."


def test_truncated_negative_binomial_gamma_hand_cases():
    assert truncated_negative_binomial_gamma(shape=1.0, mean=10.0) == 0.1  # geometric: 1/mean
    # η = 2, γ = 1/2: E[K] = 2 · (1/2) / ((1/2)(1 − 1/4)) = 8/3.
    assert truncated_negative_binomial_gamma(shape=2.0, mean=8 / 3) == pytest.approx(0.5, rel=1e-8)
    # logarithmic, γ = 1/2: E[K] = (1/2) / ((1/2) ln 2) = 1/ln 2.
    assert truncated_negative_binomial_gamma(shape=0.0, mean=1 / math.log(2)) == pytest.approx(
        0.5, rel=1e-8
    )
    with pytest.raises(ValueError):
        truncated_negative_binomial_gamma(shape=math.inf, mean=3.0)


# --- no other module reaches into dp_accounting's privates --------------------------------


def _private_accountant_attributes() -> set[str]:
    names = set()
    for accountant in (RdpAccountant(), PLDAccountant()):
        names |= {name for name in vars(accountant) if name.startswith("_")}
    return names


def _violations(path: Path, accountant_attributes: set[str]) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    aliases: set[str] = set()
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "dp_accounting":
                    aliases.add((alias.asname or alias.name).split(".")[0])
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("dp_accounting"):
            for alias in node.names:
                if alias.name.startswith("_"):
                    found.append(f"{path}:{node.lineno}: imports {node.module}.{alias.name}")
                aliases.add(alias.asname or alias.name)
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute) or not node.attr.startswith("_"):
            continue
        if node.attr.startswith("__"):
            continue
        base = node.value
        if isinstance(base, ast.Name) and base.id in aliases:
            found.append(f"{path}:{node.lineno}: {base.id}.{node.attr}")
        elif node.attr in accountant_attributes and not (
            isinstance(base, ast.Name) and base.id in ("self", "cls")
        ):
            found.append(f"{path}:{node.lineno}: .{node.attr} (an accountant's private state)")
    return found


def test_only_the_internals_module_touches_private_dp_accounting_names():
    allowed = {
        ROOT / "accounting" / "dp_accounting_internals.py",
        Path(__file__).resolve(),
    }
    attributes = _private_accountant_attributes()
    found = []
    for folder in ("accounting", "search", "results", "trainers", "spaces", "benchmarks", "tests"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path.resolve() not in allowed:
                found += _violations(path, attributes)
    assert not found, (
        "private dp_accounting names outside accounting/dp_accounting_internals.py (wrap them "
        "there and test them here):\n" + "\n".join(found)
    )
