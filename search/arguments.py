"""What a user can type to `python search/run.py`: every flag, its default and its help."""

from __future__ import annotations

import argparse
from pathlib import Path

import accounting
from trainers import add_settings_argument


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python search/run.py",
        description="Differentially private hyperparameter search: Ray Tune schedules Opacus "
        "DP-SGD trials of a registered search space and accounts for the privacy cost of the "
        "whole search (not just of each trial).",
        epilog="Examples:\n"
        "  python search/run.py --space fmnist_quick\n"
        "  python search/run.py --space fmnist_quick --target-epsilon 8 --num-samples 6\n"
        "  python search/run.py --space fmnist_quick --target-epsilon 8 --num-samples 6 "
        "--search-accounting random-stopping\n"
        "  python search/run.py --name my_search --resume\n"
        "Plan a budget first: python search/privacy.py --help",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _space_arguments(parser)
    _privacy_arguments(parser.add_argument_group("privacy of the search"))
    _search_arguments(parser.add_argument_group("the search"))
    _resource_arguments(parser.add_argument_group("resources and cluster"))
    storage = parser.add_argument_group("experiment directory (STORAGE_PATH/NAME)")
    storage.add_argument("--storage-path", type=Path, default=Path("runs"), metavar="DIR")
    storage.add_argument("--name", help="default: SPACE-YYYYmmdd-HHMMSS")
    storage.add_argument(
        "--resume",
        action="store_true",
        help="continue the interrupted experiment STORAGE_PATH/NAME",
    )
    return parser


def _space_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--space", metavar="NAME", help="the search space (see --list-spaces)")
    parser.add_argument("--list-spaces", action="store_true", help="list spaces and exit")
    add_settings_argument(
        parser, help="fix settings for every trial: --set epochs=2 batch_size=64 (repeatable)"
    )


def _privacy_arguments(privacy) -> None:
    privacy.add_argument(
        "--target-epsilon",
        type=float,
        metavar="E",
        help="ε budget of the WHOLE search: per-trial σ is planned to meet it "
        "(default: no budget; each trial spends its own target_epsilon and "
        "the search ε is reported)",
    )
    privacy.add_argument("--delta", type=float, help="δ for every trial (default: the space's)")
    privacy.add_argument(
        "--search-accounting",
        default="composition",
        choices=accounting.SEARCH_MODES,
        help="composition: all trials compose (any searcher, ASHA); "
        "random-stopping: the system draws K, random search, only the best "
        "released (Papernot & Steinke 2022); none: analysis only, does NOT "
        "cover the search (default: composition)",
    )
    privacy.add_argument(
        "--trials-distribution",
        default=accounting.AUTO,
        choices=(accounting.AUTO, *accounting.TRIAL_DISTRIBUTIONS),
        help="random-stopping: distribution of K (mean --num-samples); auto: the one whose "
        "plan needs the least noise per trial (default: auto)",
    )
    privacy.add_argument("--eta", type=float, help="shape η of the negative-binomial")
    privacy.add_argument(
        "--budgets",
        metavar="E1,E2,…",
        help="ε budgets of the search-adjusted frontier, declared before the search (default: "
        "1,2,4,8 and the space's own per-trial ε levels); budgets chosen after seeing results "
        "are shown only as analyst-only rows",
    )
    privacy.add_argument(
        "--reproducible",
        action="store_true",
        help="seed sampling and noise from the trial's seed so runs can be replayed: a "
        "research run, NOT a DP release (every output says so); default: secret randomness",
    )


def _search_arguments(search) -> None:
    search.add_argument(
        "--num-samples",
        type=int,
        default=8,
        metavar="N",
        help="trials (random-stopping: the MEAN number of trials; the system "
        "draws the actual K) (default: 8)",
    )
    search.add_argument(
        "--searcher",
        choices=("optuna", "random"),
        help="optuna (TPE; multi-objective when the space varies ε) or random "
        "(default: optuna; random for random-stopping)",
    )
    search.add_argument(
        "--scheduler",
        choices=("fifo", "asha"),
        default="fifo",
        help="asha stops weak trials early (their executed steps still count)",
    )
    search.add_argument(
        "--verbose",
        action="store_true",
        help="also print Ray Tune's status tables and every trial's log lines (default: one "
        "progress line now and then)",
    )
    search.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seeds the searcher (never K, sampling or noise: those are secret)",
    )


def _resource_arguments(resources) -> None:
    resources.add_argument("--cpus-per-trial", type=float, default=1.0)
    resources.add_argument(
        "--gpus-per-trial",
        type=float,
        default=0.0,
        help="fractions share a GPU, e.g. 0.5",
    )
    resources.add_argument(
        "--max-concurrent",
        type=int,
        default=0,
        help="at most this many trials at once (0: as resources allow)",
    )
    resources.add_argument(
        "--max-failures",
        type=int,
        default=2,
        help="retries of a crashed trial, from its last checkpoint (each runs only if the "
        "privacy plan has room: see --retry-epochs)",
    )
    resources.add_argument(
        "--retry-epochs",
        type=int,
        default=2,
        help="room the privacy plan keeps for epochs re-run after crashes or a resume (a "
        "retry re-runs at most the epoch it died in): in all, or per trial with random "
        "stopping; it is part of the released ε (default: 2; 0: no room)",
    )
    resources.add_argument("--address", help="join a running Ray cluster (e.g. auto)")
    resources.add_argument("--num-cpus", type=int, help="CPUs of the embedded local Ray")
    resources.add_argument(
        "--dashboard-host",
        default="127.0.0.1",
        help="local Ray's dashboard address (default 127.0.0.1: this machine only)",
    )
    resources.add_argument(
        "--dashboard-port",
        type=int,
        metavar="PORT",
        help="local Ray's dashboard port (default: 8265, or the next free one when another "
        "search on this machine holds it; the URL is printed)",
    )
