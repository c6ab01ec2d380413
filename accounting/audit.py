"""Empirical privacy auditing in one training run: a lower bound ε̂ on what a mechanism leaks,
from guesses about which of m canaries were in its input.

Steinke, Nasr & Jagielski, "Privacy auditing with one (1) training run" (NeurIPS 2023,
arXiv 2305.08846). Each of m canaries is included independently with probability ½ by secret
randomness; after training, an auditor guesses "in" or "out" for r of them (abstaining on the
rest) and W of the guesses are right. If the mechanism is (ε, δ)-DP then (their Theorem 5.2)

    P[W ≥ v] ≤ P[Bin(r, p) ≥ v] + 2mδ · max_{1≤i≤v} (1/i) · P[v−i ≤ Bin(r, p) < v],
    p = e^ε / (1 + e^ε)

(the first term alone for δ = 0: ε-DP randomized response is the worst case). That bound is a
p-value for the hypothesis "the mechanism is (ε, δ)-DP"; ε̂ is the largest ε it rejects at
confidence 1 − β. So ε̂ > ε (accounted) is evidence, at that confidence, that the code does not
do what its accounting assumes: a VIOLATION. ε̂ ≤ ε proves nothing about ε being tight.

The auditor's guesses come from canary scores (`audit_scores`): the top k guessed "in", the
bottom k "out". k is not chosen after seeing which guesses were right: every k of a fixed grid
is tested at β/|grid| (a union bound), and ε̂ is the largest of their bounds.

A tighter estimate, under an assumption: a μ-GDP mechanism (Dong, Roth & Su 2019) is
(ε, δ_μ(ε))-DP for every ε at once, so the same theorem gives a p-value for "the mechanism is
μ-GDP" — the smallest over ε of the (ε, δ_μ(ε)) p-values — and μ̂ is the largest μ it
rejects (as Nasr et al. 2023, arXiv 2302.07956, audit under a Gaussian assumption). Reported as
ε at the trial's δ of a μ̂-GDP mechanism: an estimate that assumes the privacy profile is
Gaussian-shaped (DP-SGD's is close to it after many steps), so it never decides the verdict.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import optimize, stats

from accounting.mechanism import AccountingError

GUESS_FRACTIONS = (0.02, 0.05, 0.1, 0.2, 0.5)
"""The fractions of the m canaries guessed on each side (top k "in", bottom k "out") that an
audit tries: the largest is a guess on every canary, the smallest abstains on 96 %."""


def p_value(m: int, r: int, v: int, epsilon: float, delta: float) -> float:
    """P[at least v of r guesses right] bounded under (ε, δ)-DP with m canaries (Theorem 5.2
    of Steinke, Nasr & Jagielski 2023); at most 1."""
    if not 0 <= v <= r <= m:
        raise AccountingError(f"need 0 ≤ correct ≤ guesses ≤ canaries (got {v}, {r}, {m})")
    if epsilon < 0 or not 0 <= delta <= 1:
        raise AccountingError(f"need ε ≥ 0 and 0 ≤ δ ≤ 1 (got ε={epsilon}, δ={delta})")
    tail, slack = _tail_and_slack(r, v, epsilon)
    return min(tail + 2 * m * delta * slack, 1.0)


def epsilon_lower_bound(m: int, r: int, v: int, delta: float, confidence: float) -> float:
    """The largest ε that v right of r guesses on m canaries reject at `confidence` (0 if they
    reject none): ε̂ such that every ε < ε̂ has p-value ≤ 1 − confidence. Bisection keeps its
    lower end rejected, so ε̂ is rounded down (the safe side of a lower bound)."""
    if not 0 < confidence < 1:
        raise AccountingError(f"confidence must be in (0, 1) (got {confidence})")
    beta = 1.0 - confidence
    if p_value(m, r, v, 0.0, delta) > beta:
        return 0.0
    low, high = 0.0, 1.0
    while p_value(m, r, v, high, delta) <= beta:
        low, high = high, 2 * high
        if high > 1e3:  # every guess right and δ = 0 with huge r: beyond any useful ε
            return low
    for _ in range(60):
        middle = (low + high) / 2
        if p_value(m, r, v, middle, delta) <= beta:
            low = middle
        else:
            high = middle
    return low


_GDP_EPSILONS = np.linspace(0.0, 20.0, 401)
"""The ε at which a μ-GDP hypothesis is tested (its p-value is the smallest over them)."""


def gaussian_delta(mu: float, epsilon: np.ndarray | float) -> np.ndarray:
    """δ_μ(ε) = Φ(−ε/μ + μ/2) − e^ε Φ(−ε/μ − μ/2): the privacy profile of μ-GDP (Dong, Roth
    & Su 2019, Corollary 2.13); 0 for μ = 0."""
    epsilon = np.asarray(epsilon, dtype=float)
    if mu <= 0:
        return np.zeros_like(epsilon)
    first = stats.norm.cdf(-epsilon / mu + mu / 2)
    second = np.exp(epsilon + stats.norm.logcdf(-epsilon / mu - mu / 2))
    return np.clip(first - second, 0.0, 1.0)


def gaussian_epsilon(mu: float, delta: float) -> float:
    """ε at δ of a μ-GDP mechanism (the inverse of `gaussian_delta` in ε)."""
    if mu <= 0 or gaussian_delta(mu, 0.0) <= delta:
        return 0.0
    high = 1.0
    while gaussian_delta(mu, high) > delta:
        high *= 2
    return float(optimize.brentq(lambda e: float(gaussian_delta(mu, e)) - delta, 0.0, high,
                                 xtol=1e-12))  # fmt: skip


def gaussian_mu_lower_bound(m: int, r: int, v: int, confidence: float) -> float:
    """The largest μ that v right of r guesses on m canaries reject at `confidence` as
    "μ-GDP" (0 if none): the hypothesis's p-value is the smallest, over ε, of the
    (ε, δ_μ(ε)) p-values of `p_value`, each valid, so their minimum is too."""
    beta = 1.0 - confidence
    # p_value(ε, δ) = tail(ε) + 2mδ·slack(ε): tail and slack do not depend on δ.
    tails, slacks = _tail_and_slack(r, v, _GDP_EPSILONS)

    def rejected(mu: float) -> bool:
        deltas = gaussian_delta(mu, _GDP_EPSILONS)
        return float(np.min(np.minimum(tails + 2 * m * deltas * slacks, 1.0))) <= beta

    if not rejected(0.0):
        return 0.0
    low, high = 0.0, 1.0
    while rejected(high):
        low, high = high, 2 * high
        if high > 64:
            return low
    for _ in range(50):
        middle = (low + high) / 2
        low, high = (middle, high) if rejected(middle) else (low, middle)
    return low


def _tail_and_slack(r: int, v: int, epsilon):
    """P[Bin(r, p) ≥ v] and max_{1≤i≤v} P[v−i ≤ Bin(r, p) < v] / i, p = e^ε/(1+e^ε) (the
    accuracy of ε-DP randomized response): the two parts of Theorem 5.2's bound. For a float
    ε, two floats; for an array, two arrays."""
    eps = np.atleast_1d(np.asarray(epsilon, dtype=float))
    p = 1.0 / (1.0 + np.exp(-eps))
    tail = stats.binom.sf(v - 1, r, p)
    if v == 0:
        slack = np.zeros_like(eps)
    else:
        below = stats.binom.pmf(np.arange(v - 1, -1, -1)[None, :], r, p[:, None])
        slack = np.max(np.cumsum(below, axis=1) / np.arange(1, v + 1)[None, :], axis=1)
    if np.ndim(epsilon) == 0:
        return float(tail[0]), float(slack[0])
    return tail, slack


def max_lower_bound(m: int, delta: float, confidence: float) -> float:
    """The most an audit with m canaries can show (every guess of the grid right): an audit
    can only find a violation of an ε below this."""
    counts = _guess_counts(m)
    per_test = 1.0 - (1.0 - confidence) / len(counts)
    return max(epsilon_lower_bound(m, 2 * k, 2 * k, delta, per_test) for k in counts)


@dataclass(frozen=True)
class AuditResult:
    """What an audit measured: ε̂ at `confidence`, from `correct` of `guesses` guesses on
    `canaries` canaries (the guess count of the grid that gave the largest ε̂)."""

    epsilon_lower: float
    confidence: float
    delta: float
    canaries: int
    guesses: int
    correct: int
    mu_lower: float = 0.0
    """μ̂: the largest μ for which "μ-GDP" is rejected (same grid and confidence)."""
    epsilon_lower_gaussian: float = 0.0
    """ε at `delta` of a μ̂-GDP mechanism: an estimate assuming a Gaussian privacy profile."""

    def verdict(self, epsilon: float) -> str:
        """ "consistent" when the lower bound does not exceed the accounted ε, else "VIOLATION"."""
        return "consistent" if self.epsilon_lower <= epsilon else "VIOLATION"

    def to_dict(self) -> dict:
        return asdict(self)


def audit_scores(
    scores: Sequence[float],
    included: Sequence[bool],
    *,
    delta: float,
    confidence: float = 0.95,
    gaussian: bool = True,
) -> AuditResult:
    """ε̂ from canary scores (higher: more likely included) and the secret inclusion bits.

    For each k of the grid (`GUESS_FRACTIONS` of m), guess "in" for the k highest scores and
    "out" for the k lowest, abstain on the rest, and bound ε at confidence 1 − β/|grid|; the
    result is the largest bound (valid at 1 − β by the union bound). Ties in scores are broken
    at random, never by the inclusion bits. `gaussian`: also the μ-GDP estimate (μ̂ and its
    ε at δ), the same way.
    """
    scores = np.asarray(scores, dtype=float)
    included = np.asarray(included, dtype=bool)
    m = len(scores)
    if m != len(included) or m < 2:
        raise AccountingError(f"need one score per canary and ≥ 2 canaries (got {m})")
    if not np.all(np.isfinite(scores)):
        raise AccountingError("canary scores must be finite")
    counts = _guess_counts(m)
    # Random order first, then a stable sort: equal scores land in random order.
    shuffle = np.random.default_rng().permutation(m)
    order = shuffle[np.argsort(scores[shuffle], kind="stable")]
    per_test = 1.0 - (1.0 - confidence) / len(counts)
    best = AuditResult(0.0, confidence, delta, m, 0, 0)
    mu = 0.0
    for k in counts:
        correct = int(included[order[-k:]].sum() + (~included[order[:k]]).sum())
        bound = epsilon_lower_bound(m, 2 * k, correct, delta, per_test)
        if bound > best.epsilon_lower or best.guesses == 0:
            best = AuditResult(bound, confidence, delta, m, 2 * k, correct)
        if gaussian:
            mu = max(mu, gaussian_mu_lower_bound(m, 2 * k, correct, per_test))
    return dataclasses.replace(
        best, mu_lower=mu, epsilon_lower_gaussian=gaussian_epsilon(mu, delta)
    )


def _guess_counts(m: int) -> list[int]:
    """k per side for each fraction of the grid (at least 1, at most m // 2), each once."""
    return sorted({max(1, min(m // 2, round(f * m))) for f in GUESS_FRACTIONS})
