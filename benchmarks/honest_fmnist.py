"""The best Fashion-MNIST model a user can release at a TOTAL ε (search and DP validation
counted), end to end through `search/run.py` on the real data, embedded local Ray, CPU.

Each budget runs one random-stopping search of the `fmnist_scatternet` space (Tramèr & Boneh's
ScatterNet features; learning rate, clip norm and GroupNorm groups searched) with
`--target-epsilon E`: the planner picks the distribution of K (`auto`) and one σ for every
trial such that the released model's ε — the search, every trial it may run and the noisy
validation scores included — is at most E. Fixed, from the published record only: the linear
head (their best on Fashion-MNIST), batch size and epochs (8192, 40: their recipe; a budget
plans σ for the largest q and T the space allows, so fixing them spends the whole budget on
the trials that run).

Reported per budget: the released model's test accuracy, the search ε (the plan's), the
per-trial ε (one trial alone), σ, the distribution auto chose, wall time — and, analyst-only,
the number of trials that ran (K: publishing it would turn the bound back into best-of-K).

    python benchmarks/honest_fmnist.py [--budgets 1,3,8] [--mean-trials 4] [--json FILE]
        [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

from _search import run_search

import accounting
import results

PUBLISHED = {
    "Tramèr & Boneh 2021, end-to-end CNN (search uncounted)": 0.860,
    "Tramèr & Boneh 2021, ScatterNet + linear (search uncounted)": 0.897,
    "DPSUR (Fu et al. 2024), search uncounted": 0.8971,
}
"""Published Fashion-MNIST test accuracies at ε = 3, δ = 1e-5, none counting the search."""
TARGET = 0.885
"""The issue's target at total ε = 3 (above every uncounted end-to-end number)."""
CAVEAT = (
    "The space's ranges and fixed settings come from Tramèr & Boneh's published recipe, which "
    "was tuned on Fashion-MNIST without counting that search: on Fashion-MNIST this prior "
    "knowledge is a leak no ε covers. The ε printed covers everything this search did."
)
FIXED = ("model=scatter_linear", "batch_size=8192", "epochs=40")
VALIDATION_NOISE = {1.0: 60.0}
"""σ_v of the noisy validation scores where the default (20) alone would not fit the budget."""


def run_budget(storage: Path, budget: float, mean_trials: int) -> dict:
    name = f"eps{budget:g}"
    sets = [*FIXED]
    if budget in VALIDATION_NOISE:
        sets.append(f"val_noise_multiplier={VALIDATION_NOISE[budget]:g}")
    args = ["--space", "fmnist_scatternet", "--target-epsilon", f"{budget:g}",
            "--search-accounting", "random-stopping", "--searcher", "random",
            "--num-samples", str(mean_trials)]  # fmt: skip
    for item in sets:
        args += ["--set", item]
    wall = run_search(storage, name, *args)
    return summarise(storage / name, budget, mean_trials, args, wall)


def summarise(directory: Path, budget: float, mean_trials: int, args: list, wall: float) -> dict:
    """The figures of one finished search (its experiment directory)."""
    experiment = results.load_experiment(directory)
    plan = experiment.privacy
    worst = plan.candidates[0]
    trial = accounting.dp_sgd_event(
        sample_rate=worst.sample_rate, noise_multiplier=worst.noise_multiplier, steps=worst.steps
    )
    release = results.build_report(experiment).releases[0]
    folders = list(directory.glob(f"dp_trial_{release['trial_id']}_*/params.json"))
    fixed = json.loads((directory / accounting.PLAN_FILENAME).read_text())["search"]["fixed"]
    config = {**fixed, **(json.loads(folders[0].read_text()) if folders else {})}
    shown = ("model", "learning_rate", "max_grad_norm", "frontend_norm_groups", "batch_size",
             "epochs")  # fmt: skip
    return {
        "total_epsilon_budget": budget,
        "search_epsilon": experiment.search_epsilon().epsilon,
        "per_trial_epsilon": accounting.epsilon(trial, delta=plan.delta, accountant="rdp"),
        "delta": plan.delta,
        "noise_multiplier": plan.noise_multiplier,
        "val_noise_multiplier": plan.val_noise_multiplier,
        "trials_distribution": plan.distribution.describe(),
        "trials_choice": plan.trials_choice,
        "mean_trials": mean_trials,
        "trials_run_analyst_only": len(experiment.trials),
        "released_config": {k: config.get(k) for k in shown},
        "released_noisy_val_accuracy": release["val_score"],
        "released_test_accuracy": release["test_score"],
        "wall_s": wall,
        "command": "python search/run.py " + " ".join(args),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", default="1,3,8", help="total ε of each search")
    parser.add_argument("--mean-trials", type=int, default=4, help="E[K] of every search")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    parser.add_argument("--keep", type=Path, help="keep the experiment directories here")
    args = parser.parse_args()
    budgets = [float(b) for b in args.budgets.split(",")]
    with tempfile.TemporaryDirectory() as directory:
        storage = args.keep or Path(directory)
        storage.mkdir(parents=True, exist_ok=True)
        runs = [run_budget(storage, budget, args.mean_trials) for budget in budgets]
    for run in runs:
        print(
            f"total ε ≤ {run['total_epsilon_budget']:g} (search ε {run['search_epsilon']:.3f}, "
            f"per trial {run['per_trial_epsilon']:.3f}, σ {run['noise_multiplier']:.3f}, "
            f"K ~ {run['trials_distribution']}, {run['trials_run_analyst_only']} trials ran): "
            f"released {run['released_config']['model']} test accuracy "
            f"{run['released_test_accuracy']:.4f} in {run['wall_s']:.0f} s"
        )
    print(CAVEAT)
    at3 = [r for r in runs if r["total_epsilon_budget"] == 3.0]
    figures = {
        "benchmark": "honest_fmnist",
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "date": time.strftime("%Y-%m-%d"),
        "published_uncounted": PUBLISHED,
        "target_at_total_epsilon_3": TARGET,
        "meets_target": bool(at3) and at3[0]["released_test_accuracy"] >= TARGET,
        "caveat": CAVEAT,
        "runs": runs,
    }
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
