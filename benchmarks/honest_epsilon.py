"""The search ε of the `fmnist_quick` and `fmnist_frontier` searches on real Fashion-MNIST,
with what DP validation adds under parallel composition measured separately.

For each search (run with `search/run.py`, embedded local Ray, CPU):
- the released search ε (the plan's: fixed before the search, covers every trial it may run,
  the noisy validation scores included);
- the same plan's ε without the validation releases (what validation costs: the difference),
  and with validation composed instead of in parallel (what parallel composition saves);
- what the ledger shows was spent (analyst-only), the released model's noisy validation
  accuracy and its test accuracy, wall time.

    python benchmarks/honest_epsilon.py [--json FILE] [--keep DIR] [--quick-samples 8]
        [--frontier-samples 12]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import tempfile
import time
from pathlib import Path

from _search import run_search as launch

import accounting
import results


def run_search(storage: Path, name: str, space: str, samples: int) -> dict:
    wall = launch(storage, name, "--space", space, "--num-samples", str(samples))
    experiment = results.load_experiment(storage / name)
    plan = experiment.privacy
    delta = plan.delta
    guarantee = plan.guarantee()
    without_validation = dataclasses.replace(
        plan, candidates=tuple(dataclasses.replace(c, val_releases=0) for c in plan.candidates)
    ).epsilon()
    composed = (guarantee.train + guarantee.validation).epsilon(delta)
    release = experiment.search_epsilon()
    report = results.build_report(experiment)
    chosen = report.releases[0]
    return {
        "space": space,
        "trials": len(experiment.trials),
        "wall_s": wall,
        "search_epsilon": release.epsilon,
        "search_epsilon_without_validation": without_validation,
        "validation_cost": release.epsilon - without_validation,
        "validation_alone_epsilon": accounting.RdpCurve.epsilon(guarantee.validation, delta)
        if guarantee.validation.values.any()
        else 0.0,
        "search_epsilon_if_validation_composed": composed,
        "spent_epsilon": release.spent,
        "largest_trial_epsilon": release.max_trial_epsilon,
        "delta": delta,
        "val_noise_multiplier": plan.val_noise_multiplier,
        "released_trial": chosen["trial_id"],
        "released_noisy_val_accuracy": chosen["val_score"],
        "released_test_accuracy": chosen["test_score"],
        "markdown": (storage / name / "pareto.md").read_text(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="also write the figures to this JSON file")
    parser.add_argument("--quick-samples", type=int, default=8)
    parser.add_argument("--frontier-samples", type=int, default=12)
    parser.add_argument("--keep", type=Path, help="keep the experiment directories here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        storage = args.keep or Path(directory)
        storage.mkdir(parents=True, exist_ok=True)
        runs = [
            run_search(storage, "quick", "fmnist_quick", args.quick_samples),
            run_search(storage, "frontier", "fmnist_frontier", args.frontier_samples),
        ]
    figures = {
        "benchmark": "honest_epsilon",
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "date": time.strftime("%Y-%m-%d"),
        "runs": runs,
    }
    for run in runs:
        print(
            f"{run['space']}: {run['trials']} trials in {run['wall_s']:.0f} s; search ε "
            f"{run['search_epsilon']:.4f} (without validation {run['search_epsilon_without_validation']:.4f}, "  # noqa: E501
            f"validation alone {run['validation_alone_epsilon']:.4f}, validation composed "
            f"instead of parallel {run['search_epsilon_if_validation_composed']:.4f}); spent "
            f"{run['spent_epsilon']:.4f}; released {run['released_trial']}: noisy val acc "
            f"{run['released_noisy_val_accuracy']:.4f}, test acc "
            f"{run['released_test_accuracy']:.4f}"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
