"""`python -m trainers --space NAME [--set key=value ...] --out DIR`: one trial, no Ray."""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import uuid
from pathlib import Path
from typing import Any

import accounting
import spaces
from trainers.command_line import add_settings_argument, parse_overrides, writable_directory
from trainers.config import TrainerError, make_config


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m trainers",
        description="Run one DP-SGD trial of a search space without Ray: the space's defaults, "
        "overridden by --set, and write DIR/metrics.json.",
        epilog="Example: python -m trainers --space fmnist_quick --set epochs=1 --out runs/one",
    )
    parser.add_argument("--space", required=True, help="registered search space (--list-spaces)")
    add_settings_argument(
        parser, help="override settings, e.g. --set learning_rate=2 private=false (repeatable)"
    )
    parser.add_argument("--out", required=True, type=Path, help="folder for metrics.json")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="a seconds-long run of the space on tiny synthetic data with random weights "
        "(same code path; --set still applies on top)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        space = spaces.get_space(args.space)
        overrides = parse_overrides(args.overrides)
        out_dir = writable_directory(args.out, "--out")
        # torch loads only now: a typo above is answered at once.
        from trainers.loop import train
        from trainers.smoke import smoke_config

        base = smoke_config(space, out_dir) if args.smoke else space.default_config()
        config = make_config({**base, **overrides})
        out_dir.mkdir(parents=True, exist_ok=True)  # every check above passed
        history: list[dict[str, Any]] = []
        ledger_report = _LedgerReport(out_dir, history)
        final = train(config, ledger_report, before_epoch=ledger_report.before_epoch)
    except (spaces.SpaceError, TrainerError, accounting.AccountingError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    metrics = {
        "space": space.name,
        "accuracy": final["test_accuracy"],
        "epsilon": final["epsilon"],
        "delta": final["delta"],
        "noise_multiplier": final["noise_multiplier"],
        "sample_rate": final["sample_rate"],
        "steps": final["steps"],
        "private": final["private"],
        "accountant": final["accountant"],
        "val_releases": final["val_releases"],
        "release_label": final.get("release_label"),
        "final": final,
        "history": history,
        "config": config.to_dict(),
    }
    path = _write_json_atomically(out_dir / "metrics.json", metrics)
    epsilon = (
        "∞ (not private)"
        if math.isinf(final["epsilon"])
        else accounting.round_up(final["epsilon"], 3)
    )
    print(
        f"test accuracy {final['test_accuracy']:.4f} at ε={epsilon}, δ={final['delta']:g} "
        f"(σ={final['noise_multiplier']:.4g}, q={final['sample_rate']:.4g}, "
        f"{final['steps']} steps) → {path}"
    )
    if final.get("release_label"):
        print(final["release_label"])
    return 0


class _LedgerReport:
    """Keeps each epoch's metrics and appends the executed mechanism to DIR's privacy ledger
    as the trial runs, so `python search/privacy.py --ledger DIR` can audit it."""

    def __init__(self, out_dir: Path, history: list[dict[str, Any]]) -> None:
        self.ledger = accounting.PrivacyLedger(out_dir / accounting.LEDGER_FILENAME)
        self.attempt = uuid.uuid4().hex[:12]
        self.history = history

    def before_epoch(self, upcoming: dict[str, Any]) -> None:
        """The coming epoch's steps, recorded before it runs (a kill mid-epoch keeps them)."""
        self._append({**upcoming, "done": False})

    def __call__(self, metrics: dict[str, Any]) -> None:
        self.history.append(metrics)
        self._append(metrics)

    def _append(self, metrics: dict[str, Any]) -> None:
        self.ledger.append(
            accounting.LedgerRecord(
                trial_id="single",
                attempt=self.attempt,
                sample_rate=metrics["sample_rate"],
                noise_multiplier=metrics["noise_multiplier"],
                steps=metrics["steps"],
                status="completed" if metrics["done"] else "running",
                simulated=bool(metrics.get("tan_simulated", False)),
                val_noise_multiplier=metrics["val_noise_multiplier"],
                val_releases=metrics["val_releases"],
                start_val_releases=metrics["start_val_releases"],
                planned_val_releases=metrics["planned_val_releases"],
            )
        )


def _write_json_atomically(path: Path, data: dict) -> Path:
    """JSON with ∞ written as null, replacing `path` whole or not at all."""

    def clean(value):  # JSON has no ∞: write it as null, the "private" flag says why
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, list):
            return [clean(v) for v in value]
        return value

    return accounting.write_atomically(path, json.dumps(clean(data), indent=2))


if __name__ == "__main__":
    sys.exit(main())
