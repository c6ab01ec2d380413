"""gpu_check.sh's last step: one JSON of what its parts left in its work folder.

    python benchmarks/gpu_check.py WORK_DIR OUTPUT.json

WORK_DIR holds `parts.tsv` (a line per part: name, exit status, seconds), each part's command
line (`NAME.command`) and log (`NAME.log`), `dp_overhead.json`, the search's experiment folder
`search/nfnet_cifar_check/` and `gpu.txt` (nvidia-smi's answer, if any). Standard library
only: it must run even when the install failed.
"""

from __future__ import annotations

import csv
import json
import sys
import time
from pathlib import Path

SEARCH_NAME = "nfnet_cifar_check"


def _tail(path: Path, lines: int = 20) -> list[str]:
    return path.read_text(errors="replace").splitlines()[-lines:] if path.exists() else []


def _parts(work: Path) -> dict:
    parts = {}
    for line in (work / "parts.tsv").read_text().splitlines():
        name, status, seconds = line.split("\t")
        part = {"status": int(status), "seconds": float(seconds)}
        if (work / f"{name}.command").exists():
            part["command"] = (work / f"{name}.command").read_text().strip()
        if part["status"] != 0:  # 124: its `timeout` ran out
            part["log_tail"] = _tail(work / f"{name}.log")
        parts[name] = part
    return parts


def _most_at_once(trials: list[dict]) -> int:
    """The most trials running at one moment: >1 shows trials sharing a GPU (fractions)."""
    events = []
    for trial in trials:
        if trial["start_time"] and trial["end_time"]:
            events += [(float(trial["start_time"]), 1), (float(trial["end_time"]), -1)]
    running = most = 0
    for _, change in sorted(events):
        running += change
        most = max(most, running)
    return most


def _search(work: Path) -> dict:
    directory = work / "search" / SEARCH_NAME
    summary: dict = {}
    if (directory / "trials.csv").exists():
        with open(directory / "trials.csv", newline="") as f:
            rows = [r for r in csv.DictReader(f) if r.get("table", "trials") == "trials"]
        summary["trials"] = [
            {
                "trial_id": r["trial_id"],
                "status": r["status"],
                "seconds": float(r["end_time"]) - float(r["start_time"])
                if r["start_time"] and r["end_time"]
                else None,
                "val_accuracy": float(r["val_accuracy"]) if r.get("val_accuracy") else None,
                "trial_epsilon": float(r["trial_epsilon"]) if r.get("trial_epsilon") else None,
            }
            for r in rows
        ]
        summary["most_trials_at_once"] = _most_at_once(rows)
    if (directory / "results.json").exists():
        release = json.loads((directory / "results.json").read_text())["experiments"][0]
        summary["search_epsilon"] = (release.get("release") or {}).get("search_epsilon")
    if (directory / "search.json").exists():
        summary["fixed"] = json.loads((directory / "search.json").read_text())["search"]["fixed"]
    trials = summary.get("trials", [])
    # Finished: results exported and every trial ran to its end.
    summary["finished"] = (
        (directory / "results.json").exists()
        and bool(trials)
        and all(t["status"] == "completed" for t in trials)
    )
    return summary


def combine(work: Path, output: Path) -> dict:
    parts = _parts(work)
    figures = {
        "check": "gpu_check",
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "dry_run": (work / "dry_run").exists(),
        "gpu": (work / "gpu.txt").read_text().strip() if (work / "gpu.txt").exists() else None,
        "commit": (work / "commit.txt").read_text().strip()
        if (work / "commit.txt").exists()
        else None,
        "parts": parts,
        "dp_overhead": json.loads((work / "dp_overhead.json").read_text())
        if (work / "dp_overhead.json").exists()
        else None,
        "search": {**_search(work), **parts.get("search", {})},
    }
    figures["ok"] = all(p["status"] == 0 for p in parts.values()) and figures["search"]["finished"]
    output.write_text(json.dumps(figures, indent=2) + "\n")
    return figures


def main() -> int:
    if len(sys.argv) != 3:
        print("error: usage: python benchmarks/gpu_check.py WORK_DIR OUTPUT.json", file=sys.stderr)
        return 2
    figures = combine(Path(sys.argv[1]), Path(sys.argv[2]))
    for name, part in figures["parts"].items():
        print(f"{name}: exit status {part['status']} after {part['seconds']:.0f} s")
    search = figures["search"]
    print(f"search finished: {search['finished']}, trials: {len(search.get('trials', []))}, "
          f"most at once: {search.get('most_trials_at_once')}")  # fmt: skip
    print(f"wrote {sys.argv[2]}")
    return 0 if figures["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
