"""How long a user waits for the answer to a mistake: each command line refusing bad input,
timed as a user runs it (a fresh process), median of several runs. Target: under 1 s for
argument and space errors (issue 17: they took 7-10 s when torch and Ray loaded first).

    python benchmarks/cli_latency.py [--repeats 5] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CASES = {
    "unknown space": ["search/run.py", "--space", "fmnist_quik"],
    "unknown setting": ["search/run.py", "--space", "fmnist_quick", "--set", "learning_rat=1"],
    "bad flag value": ["search/run.py", "--space", "fmnist_quick", "--num-samples", "0"],
    "bad budgets": ["search/run.py", "--space", "fmnist_quick", "--budgets", "1,x"],
    "unknown flag": ["search/run.py", "--space", "fmnist_quick", "--epsilon", "3"],
    "trial: unknown setting": [
        "-m",
        "trainers",
        "--space",
        "fmnist_quick",
        "--set",
        "lr=1",
        "--out",
        "/tmp/never",
    ],  # fmt: skip
    "--help": ["search/run.py", "--help"],
}


def time_case(argv: list[str], repeats: int) -> dict:
    walls = []
    for _ in range(repeats):
        started = time.monotonic()
        result = subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True)
        walls.append(time.monotonic() - started)
    last = (result.stderr or result.stdout).strip().splitlines()
    return {
        "argv": argv,
        "exit_status": result.returncode,
        "median_s": statistics.median(walls),
        "max_s": max(walls),
        "answer": last[-1][:160] if last else "",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()
    rows = {name: time_case(argv, args.repeats) for name, argv in CASES.items()}
    print(f"| refused input | exit | median | max |  ({args.repeats} runs each)")
    print("|---|---|---|---|")
    for name, row in rows.items():
        print(f"| {name} | {row['exit_status']} | {row['median_s']:.2f} s | {row['max_s']:.2f} s |")
    if args.json:
        machine = f"{platform.machine()}, {platform.python_version()}, {platform.node()}"
        Path(args.json).write_text(
            json.dumps({"machine": machine, "repeats": args.repeats, "cases": rows}, indent=1)
        )


if __name__ == "__main__":
    main()
