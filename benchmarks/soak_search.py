"""Soak: a search of many tiny trials, watching memory as the trials accumulate.

Runs `search/run.py` (embedded local Ray, tiny synthetic data, one epoch per trial) with
--num-samples trials and samples, every half second, the driver's resident memory, the largest
trial worker's (trials reuse their Ray actors, so one worker process runs many trials), and
how many trials the ledger shows finished. Prints and (with --json) writes: the total wall
time, the driver's peak RSS (the kernel's high-water mark), its RSS after each quarter of the
trials, the largest worker RSS seen, and the slopes of driver and worker RSS against finished
trials over the second half of the run (what each extra trial costs once warm; ≈ 0 means
memory does not grow with the trials).

    python benchmarks/soak_search.py [--num-samples 200] [--searcher optuna] [--json FILE]

Linux only (reads /proc).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from accounting import latest_status, read_ledger

ROOT = Path(__file__).resolve().parents[1]


TINY = [
    "--space", "fmnist_quick", "--set", "dataset=synthetic", "--set", "synthetic_examples=160",
    "--set", "validation_fraction=0.2", "--set", "batch_size=64", "--set", "epochs=1",
    "--set", "delta=1e-4", "--set", "eval_batch_size=128",
]  # fmt: skip


def _status_kib(pid: int, field: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def _trial_workers() -> list[int]:
    """Pids of the Ray actor processes running trials (Tune titles them ray::ImplicitFunc...)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "cmdline").read_bytes().startswith(b"ray::ImplicitFunc"):
                    pids.append(int(entry.name))
            except OSError:
                continue  # it exited between listing and reading
    return pids


def _finished(ledger: Path) -> int:
    if not ledger.exists():
        return 0
    try:
        return sum(s != "running" for s in latest_status(read_ledger(ledger)).values())
    except Exception:  # noqa: BLE001 - a line being written; the next sample reads it
        return -1


def _slope(points: list[tuple[int, int]]) -> float:
    """Least-squares KiB per finished trial."""
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    var = sum((x - mean_x) ** 2 for x, _ in points)
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / var if var else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-samples", type=int, default=200)
    parser.add_argument("--searcher", choices=("optuna", "random"), default="optuna")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as storage:
        ledger = Path(storage) / "soak" / "privacy_ledger.jsonl"
        command = [
            sys.executable, "search/run.py", *TINY, "--num-samples", str(args.num_samples),
            "--searcher", args.searcher, "--storage-path", storage, "--name", "soak",
        ]  # fmt: skip
        env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONWARNINGS": "ignore"}
        log = Path(storage) / "driver.log"
        started = time.monotonic()
        with open(log, "w") as out:
            driver = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=out)
            samples: list[dict] = []
            peak = worker_peak = 0
            while driver.poll() is None:
                rss = _status_kib(driver.pid, "VmRSS")
                peak = max(peak, _status_kib(driver.pid, "VmHWM") or 0)
                workers = [_status_kib(pid, "VmRSS") or 0 for pid in _trial_workers()]
                worker_peak = max([worker_peak, *workers])
                finished = _finished(ledger)
                if rss is not None and finished >= 0:
                    samples.append({"t": time.monotonic() - started, "finished": finished,
                                    "rss_kib": rss, "worker_rss_kib": max(workers, default=0),
                                    "workers": len(workers)})  # fmt: skip
                time.sleep(0.5)
        wall = time.monotonic() - started
        if driver.returncode != 0:
            sys.exit(f"the search failed:\n{log.read_text()[-3000:]}")
        finished = _finished(ledger)

    n = args.num_samples
    by_quarter = {}
    for quarter in (1, 2, 3, 4):
        reached = [s for s in samples if s["finished"] >= quarter * n // 4]
        by_quarter[f"{quarter * 25}%"] = reached[0]["rss_kib"] if reached else None
    # While trials run (not the end, when the driver builds the report and the plot).
    second_half = [(s["finished"], s["rss_kib"]) for s in samples if n // 2 <= s["finished"] < n]
    slope = _slope(second_half) if len(second_half) > 2 else None
    worker_half = [(s["finished"], s["worker_rss_kib"]) for s in samples
                   if n // 2 <= s["finished"] < n and s["workers"]]  # fmt: skip
    worker_slope = _slope(worker_half) if len(worker_half) > 2 else None
    figures = {
        "benchmark": "soak_search",
        "trials": n,
        "trials_finished": finished,
        "searcher": args.searcher,
        "wall_s": wall,
        "trials_per_hour": finished / wall * 3600,
        "driver_peak_rss_mib": peak / 1024,
        "driver_rss_mib_when_finished": {k: v and v / 1024 for k, v in by_quarter.items()},
        "driver_rss_slope_kib_per_trial_second_half": slope,
        "worker_peak_rss_mib": worker_peak / 1024,
        "worker_rss_slope_kib_per_trial_second_half": worker_slope,
        "most_trial_workers_at_once": max((s["workers"] for s in samples), default=0),
        "samples": samples,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
    }
    print(f"{finished}/{n} trials ({args.searcher}) in {wall:.0f} s "
          f"({figures['trials_per_hour']:.0f} trials/hour)")  # fmt: skip
    print(
        f"driver peak RSS {peak / 1024:.0f} MiB; RSS after 25/50/75/100 % of the trials: "
        + ", ".join(f"{v / 1024:.0f}" if v else "n/a" for v in by_quarter.values())
        + " MiB"
    )
    if slope is not None:
        print(f"driver RSS slope over the second half: {slope:+.1f} KiB per trial")
    print(f"largest trial worker RSS {worker_peak / 1024:.0f} MiB", end="")
    print(f"; its slope over the second half: {worker_slope:+.1f} KiB per trial"
          if worker_slope is not None else "")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
