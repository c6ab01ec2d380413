"""Time the quickstart search (`search/run.py --space fmnist_frontier`) on this machine.

Runs the README's quickstart as is (Optuna, each trial at its own ε ∈ {1, 2, 4, 8}), then the
same space as a random search with 1 and with 2 trials at a time (same seed, so the same
trials) to measure the speedup of concurrency. For each: wall time, the per-trial ε the trials
drew (a frontier needs several), the search ε (the DP release's) and the best noisy validation
score.

    python benchmarks/quickstart_search.py [--json FILE] [--keep DIR] [--num-samples N]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import pandas as pd
from _search import run_search as launch

import accounting
import results

SPACE = "fmnist_frontier"


def run_search(storage: Path, name: str, *extra: str) -> dict:
    wall = launch(storage, name, "--space", SPACE, *extra)
    trials = pd.read_csv(storage / name / "trials.csv")
    release = results.load_experiment(storage / name).search_epsilon()
    return {
        "name": name,
        "args": ["--space", SPACE, *extra],
        "wall_s": wall,
        "trials": len(trials),
        "trials_per_hour": len(trials) / wall * 3600,
        # The ε each trial targeted (the searched setting), one entry per distinct value.
        "trial_epsilons": sorted(set(trials["config/target_epsilon"].astype(float))),
        "search_epsilon": release.epsilon,  # exact; printed rounded up
        "spent_epsilon": release.spent,  # analyst-only
        "best_val_accuracy": float(trials["val_accuracy"].max()),
        "markdown": (storage / name / "pareto.md").read_text(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="also write the figures to this JSON file")
    parser.add_argument("--keep", type=Path, help="keep the experiment directories here")
    parser.add_argument("--num-samples", type=int, default=8)
    args = parser.parse_args()
    n = str(args.num_samples)
    with tempfile.TemporaryDirectory() as directory:
        storage = args.keep or Path(directory)
        storage.mkdir(parents=True, exist_ok=True)
        quickstart = run_search(storage, "quickstart", "--num-samples", n)
        one = run_search(storage, "random_c1", "--num-samples", n, "--searcher", "random",
                         "--max-concurrent", "1")  # fmt: skip
        two = run_search(storage, "random_c2", "--num-samples", n, "--searcher", "random",
                         "--max-concurrent", "2")  # fmt: skip
    figures = {
        "benchmark": "quickstart_search",
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "date": time.strftime("%Y-%m-%d"),
        "quickstart": quickstart,
        "concurrency_1": one,
        "concurrency_2": two,
        "speedup_2_over_1": one["wall_s"] / two["wall_s"],
    }
    for run in (quickstart, one, two):
        print(
            f"{run['name']}: {run['trials']} trials in {run['wall_s']:.0f} s "
            f"({run['trials_per_hour']:.0f} trials/hour), trial ε "
            f"{', '.join(f'{e:g}' for e in run['trial_epsilons'])}, search ε "
            f"{accounting.show_epsilon(run['search_epsilon'])}, "
            f"best val acc {run['best_val_accuracy']:.4f}"
        )
    print(f"speedup of 2 concurrent trials over 1: {figures['speedup_2_over_1']:.2f}x")
    print(quickstart["markdown"])
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
