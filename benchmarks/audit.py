"""Empirical privacy audit of the Tramèr–Boneh CNN on Fashion-MNIST: ε̂ (one-run lower bound,
Steinke, Nasr & Jagielski 2023) against the accounted ε, white-box gradient canaries at each
ε, and one black-box point with input-space canaries.

    python benchmarks/audit.py [--epsilons 1,2,4,8] [--canaries 1000] [--epochs 10]
        [--black-box 8] [--engine fast] [--json FILE] [--plot FILE.png]

Each point is one trial of the `fmnist_cnn` space's recipe (B = 2048, lr = 4, momentum 0.9,
C = 0.1) calibrated to the target ε, with secret canaries, sampling and noise (not a
reproducible run), validation off (the audit compares with the DP-SGD mechanism's ε). Prints a
table and writes the JSON ({"results": [{"kind", "epsilon", "epsilon_lower", "guesses",
"correct", "max_epsilon_lower", "verdict", …}], "machine": …}) and a plot of ε̂ against ε with
the line ε̂ = ε.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import time
from pathlib import Path

import torch

import spaces
from trainers import audit_trial, make_config


def _args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epsilons", default="1,2,4,8", help="accounted ε of the white-box points")
    parser.add_argument("--canaries", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=10, help="epochs per trial (recipe: 40)")
    parser.add_argument(
        "--black-box", type=float, default=8.0, help="ε of the black-box point (0: none)"
    )
    parser.add_argument("--engine", choices=("fast", "opacus"), default="fast")
    parser.add_argument("--confidence", type=float, default=0.95)
    parser.add_argument("--json", type=Path, default=Path("benchmarks/audit.json"))
    parser.add_argument("--plot", type=Path, default=Path("docs/audit.png"))
    return parser.parse_args(argv)


def _point(args, kind: str, epsilon: float) -> dict:
    values = spaces.get_space("fmnist_cnn").default_config()
    values.update(epochs=args.epochs, target_epsilon=epsilon, validation="off",
                  clipping=args.engine)  # fmt: skip
    started = time.monotonic()
    result = audit_trial(
        make_config(values), kind=kind, canaries=args.canaries, confidence=args.confidence
    )
    result.pop("final")
    result["target_epsilon"] = epsilon
    result["seconds"] = round(time.monotonic() - started, 1)
    return result


def _plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(5, 4.2))
    top = max(r["epsilon"] for r in results) * 1.1
    axes.plot([0, top], [0, top], "k--", lw=1, label="ε̂ = ε (a point above: a violation)")
    for kind, marker in (("gradient", "o"), ("input", "s")):
        points = [r for r in results if r["kind"] == kind]
        if points:
            label = (
                "white-box gradient canaries" if kind == "gradient" else "black-box input canaries"
            )
            axes.plot([r["epsilon"] for r in points], [r["epsilon_lower"] for r in points],
                      marker, ls="-" if kind == "gradient" else "", label=label)  # fmt: skip
    ceiling = results[0]["max_epsilon_lower"]
    label = f"most {results[0]['canaries']} canaries can show ({ceiling:.2f})"
    axes.axhline(ceiling, color="grey", lw=0.8, ls=":", label=label)
    axes.set_xlabel("accounted ε (DP-SGD, δ = 1e-5)")
    axes.set_ylabel(f"audit lower bound ε̂ ({results[0]['confidence']:.0%} confidence)")
    axes.set_title("Tramèr–Boneh CNN, Fashion-MNIST: one-run audit")
    axes.set_xlim(0, top)
    axes.set_ylim(0, top)
    axes.legend(fontsize=8, loc="upper left")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)


def main(argv=None) -> int:
    args = _args(argv)
    logging.basicConfig(level=logging.WARNING)
    points = [("gradient", float(e)) for e in args.epsilons.split(",") if e.strip()]
    if args.black_box:
        points.append(("input", args.black_box))
    results = []
    print(
        f"{'canaries':<9} {'ε':>6} {'ε̂':>7} {'right/guesses':>14} {'ceiling':>8}  verdict    time"
    )
    for kind, epsilon in points:
        r = _point(args, kind, epsilon)
        results.append(r)
        print(f"{kind:<9} {r['epsilon']:>6.3f} {r['epsilon_lower']:>7.3f} "
              f"{r['correct']:>6}/{r['guesses']:<7} {r['max_epsilon_lower']:>8.3f}  "
              f"{r['verdict']:<10} {r['seconds']:.0f} s", flush=True)  # fmt: skip
    machine = {"platform": platform.platform(), "processor": platform.processor(),
               "cpus": torch.get_num_threads(), "torch": torch.__version__}  # fmt: skip
    args.json.parent.mkdir(parents=True, exist_ok=True)
    report = {"results": results, "machine": machine, "epochs": args.epochs,
              "engine": args.engine}  # fmt: skip
    args.json.write_text(json.dumps(report, indent=2))
    _plot(results, args.plot)
    print(f"→ {args.json}, {args.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
