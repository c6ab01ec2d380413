"""`python search/audit.py --space NAME --canaries M`: an empirical privacy audit of one trial.

Trains one trial of a search space (its defaults, overridden by --set, as `python -m trainers`)
with M canaries, each included with probability ½ by secret randomness, and prints the
trial's accounted ε beside the audit's lower bound ε̂ (Steinke, Nasr & Jagielski 2023): a
VIOLATION (ε̂ > ε, exit status 1) means the code leaks more than its accounting says; "consistent"
means only that this audit found no such evidence (ε̂ is a lower bound, not an estimate of ε).

An audit is one more DP-SGD trial: on the private data set it spends that trial's ε again;
on synthetic or public data (`--smoke`, or `--set dataset=...`) it spends nothing private.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import tempfile

import accounting
import spaces
from trainers import (
    CANARY_KINDS,
    TrainerError,
    add_settings_argument,
    audit_trial,
    make_config,
    parse_overrides,
    smoke_config,
)

VIOLATION_EXIT = 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python search/audit.py",
        description="Audit one DP-SGD trial of a search space with canaries: its accounted ε "
        "beside an empirical lower bound ε̂ (a VIOLATION exits with status 1).",
        epilog="Example: python search/audit.py --space fmnist_quick --canaries 1000 "
        "--set epochs=2 --engine fast",
    )
    parser.add_argument("--space", required=True, help="registered search space")
    add_settings_argument(
        parser, help="override settings of the space's defaults, as in python -m trainers"
    )
    parser.add_argument("--canaries", type=int, default=1000, help="number of canaries M")
    parser.add_argument(
        "--kind", choices=CANARY_KINDS, default="gradient",
        help="gradient: white-box canaries in the clipped sums (strongest); input: noise "
        "images with random labels in the training set (black-box, weak)",
    )  # fmt: skip
    parser.add_argument(
        "--engine", choices=("fast", "opacus", "auto"), default=None,
        help="clipping engine (the space's setting when not given)",
    )  # fmt: skip
    parser.add_argument(
        "--confidence", type=float, default=0.95, help="confidence 1−β of ε̂ (default 0.95)"
    )
    parser.add_argument(
        "--smoke", action="store_true",
        help="tiny synthetic data and random weights (same code path; spends nothing private)",
    )  # fmt: skip
    parser.add_argument("--json", action="store_true", help="end with one JSON line")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        result = _audit(args)
    except (spaces.SpaceError, TrainerError, accounting.AccountingError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    _print(result, args)
    return VIOLATION_EXIT if result["verdict"] == "VIOLATION" else 0


def _audit(args) -> dict:
    if args.canaries < 2:
        raise TrainerError(f"--canaries must be at least 2 (got {args.canaries}); use ≥ 100.")
    if not 0 < args.confidence < 1:
        raise TrainerError(f"--confidence must be in (0, 1) (got {args.confidence}).")
    space = spaces.get_space(args.space)
    with tempfile.TemporaryDirectory(prefix="dp-audit-") as workdir:
        base = smoke_config(space, workdir) if args.smoke else space.default_config()
        overrides = parse_overrides(args.overrides)
        if args.engine is not None:
            overrides["clipping"] = args.engine
        config = make_config({**base, **overrides})
        result = audit_trial(
            config, kind=args.kind, canaries=args.canaries, confidence=args.confidence
        )
    result["space"] = space.name
    return result


def _print(result: dict, args) -> None:
    epsilon = accounting.round_up(result["epsilon"], 3)
    print(
        f"audit of {result['space']}: {result['canaries']} {result['kind']} canaries, "
        f"{result['engine']} clipping engine, q={result['sample_rate']:.4g}, "
        f"σ={result['noise_multiplier']:.4g}, {result['steps']} steps"
    )
    print(
        f"  ε (accounted, DP-SGD, δ={result['delta']:g})   {epsilon}\n"
        f"  ε̂ (audit lower bound, {result['confidence']:.0%} confidence)   "
        f"{math.floor(result['epsilon_lower'] * 1000) / 1000}   "
        f"({result['correct']} of {result['guesses']} guesses right; "
        f"this audit could show at most {result['max_epsilon_lower']:.3f})\n"
        f"  verdict: {result['verdict']}\n"
        f"  assuming a Gaussian privacy profile (an estimate, not the verdict): μ̂ = "
        f"{result['mu_lower']:.3f}, ε at δ {result['epsilon_lower_gaussian']:.3f}"
    )
    if result["verdict"] == "VIOLATION":
        print(
            "  the trial leaks more than its accounted ε at this confidence: its privacy "
            "code or accounting is wrong; do not release models trained with it."
        )
    elif result["max_epsilon_lower"] <= result["epsilon"]:
        print(
            "  note: with this few canaries no audit could exceed the accounted ε; use more "
            "(--canaries) for a test that can fail."
        )
    if args.json:
        keys = ("space", "kind", "engine", "epsilon", "epsilon_lower", "confidence", "delta",
                "canaries", "guesses", "correct", "max_epsilon_lower", "verdict", "mu_lower",
                "epsilon_lower_gaussian", "sample_rate", "noise_multiplier", "steps",
                "test_accuracy")  # fmt: skip
        print(json.dumps({key: result[key] for key in keys}))


if __name__ == "__main__":
    sys.exit(main())
