"""Search ε / trial ε of random stopping for each distribution of K, and what `auto` picks.

De et al. (2022)'s CIFAR-10 mechanism (q = 4096/50 000, 875 steps) at σ = 10 (trial ε ≈ 1)
and σ = 3 (trial ε ≈ 3.9), and Tramèr & Boneh's ScatterNet mechanism on Fashion-MNIST
(q = 1/7, 280 steps) at σ = 4.05, each for E[K] ∈ {2, 4, 10}, δ = 1e-5 (RDP, dp_accounting's
RepeatAndSelectDpEvent via accounting.repeat_and_select_epsilon). Then what each tail costs
in trials: P(K = 0), P(K = 1), median and 99th percentile of K at E[K] = 4 (seeded draws).

    python benchmarks/trials_distributions.py [--json FILE]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

import accounting

MECHANISMS = {
    "De et al., σ=10": (4096 / 50000, 10.0, 875),
    "De et al., σ=3": (4096 / 50000, 3.0, 875),
    "Tramèr & Boneh ScatterNet, σ=4.05": (1 / 7, 4.05, 280),
}
MEANS = (2.0, 4.0, 10.0)
TAIL_MEAN, TAIL_DRAWS = 4.0, 200_000
DELTA = 1e-5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()
    rows = []
    for name, (q, sigma, steps) in MECHANISMS.items():
        trial = accounting.dp_sgd_event(sample_rate=q, noise_multiplier=sigma, steps=steps)
        trial_epsilon = accounting.epsilon(trial, delta=DELTA, accountant="rdp")
        for mean in MEANS:
            choice = accounting.choose_trials(
                mean,
                lambda d, trial=trial: accounting.repeat_and_select_epsilon(
                    [trial], distribution=d, delta=DELTA
                ),
                measure="ε",
            )
            ratios = {d.describe(): eps / trial_epsilon for d, eps in choice.costs}
            rows.append({"mechanism": name, "trial_epsilon": trial_epsilon, "mean": mean,
                         "ratios": ratios, "auto": choice.chosen.describe()})  # fmt: skip
            cells = ", ".join(f"{k.split(' (')[0]}{_eta(k)} {v:.2f}×" for k, v in ratios.items())
            print(f"{name} (trial ε {trial_epsilon:.3f}), E[K]={mean:g}: {cells}; "
                  f"auto → {choice.chosen.describe()}")  # fmt: skip
    tails = {}
    for distribution in accounting.auto_candidates(TAIL_MEAN):  # what each tail costs in K
        rng = np.random.default_rng(0)
        draws = np.array([distribution.sample(rng) for _ in range(TAIL_DRAWS)])
        tail = {
            "P(K=0)": float(np.mean(draws == 0)), "P(K=1)": float(np.mean(draws == 1)),
            "median": float(np.median(draws)), "p99": float(np.percentile(draws, 99)),
        }  # fmt: skip
        tails[distribution.describe()] = tail
        print(f"K ~ {distribution.describe()}: P(K=0) {tail['P(K=0)']:.3f}, P(K=1) "
              f"{tail['P(K=1)']:.3f}, median {tail['median']:g}, 99th percentile "
              f"{tail['p99']:g} ({TAIL_DRAWS} draws)")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps({"delta": DELTA, "rows": rows, "tails": tails},
                                              indent=2, ensure_ascii=False))  # fmt: skip


def _eta(label: str) -> str:
    return f" η={label.split('η=')[1].rstrip(')')}" if "η=" in label else ""


if __name__ == "__main__":
    main()
