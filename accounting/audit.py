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
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

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
    p = 1.0 / (1.0 + math.exp(-epsilon))  # accuracy of ε-DP randomized response
    tail = float(stats.binom.sf(v - 1, r, p))  # P[Bin(r, p) ≥ v]
    if delta == 0 or v == 0:
        return min(tail, 1.0)
    # P[v−i ≤ Bin < v] for i = 1…v, divided by i: its maximum scales the δ term.
    below = stats.binom.pmf(np.arange(v - 1, -1, -1), r, p)
    slack = float(np.max(np.cumsum(below) / np.arange(1, v + 1)))
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
) -> AuditResult:
    """ε̂ from canary scores (higher: more likely included) and the secret inclusion bits.

    For each k of the grid (`GUESS_FRACTIONS` of m), guess "in" for the k highest scores and
    "out" for the k lowest, abstain on the rest, and bound ε at confidence 1 − β/|grid|; the
    result is the largest bound (valid at 1 − β by the union bound). Ties in scores are broken
    at random, never by the inclusion bits.
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
    for k in counts:
        correct = int(included[order[-k:]].sum() + (~included[order[:k]]).sum())
        bound = epsilon_lower_bound(m, 2 * k, correct, delta, per_test)
        if bound > best.epsilon_lower or best.guesses == 0:
            best = AuditResult(bound, confidence, delta, m, 2 * k, correct)
    return best


def _guess_counts(m: int) -> list[int]:
    """k per side for each fraction of the grid (at least 1, at most m // 2), each once."""
    return sorted({max(1, min(m // 2, round(f * m))) for f in GUESS_FRACTIONS})
