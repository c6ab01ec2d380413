"""`python search/run.py --space NAME`: a differentially private hyperparameter search.

Today this answers `--help` and `--list-spaces`; the Ray Tune search that runs the trials (and
accounts for the privacy cost of the search itself) is the next piece of work. Until then run
one trial of a space with `python -m trainers --space NAME --out DIR`.
"""

from __future__ import annotations

import argparse
import sys

import spaces


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python search/run.py",
        description="Differentially private hyperparameter search: Ray Tune schedules Opacus "
        "DP-SGD trials of a registered search space and accounts for the privacy cost of the "
        "whole search.",
        epilog="Spaces: python search/run.py --list-spaces. "
        "One trial without Ray: python -m trainers --space NAME --out DIR.",
    )
    parser.add_argument(
        "--space",
        metavar="NAME",
        help="the search space to run (a module in spaces/, e.g. fmnist_quick or nfnet_cifar)",
    )
    parser.add_argument(
        "--list-spaces", action="store_true", help="print each space's name and description"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.list_spaces:
        registered = spaces.list_spaces()
        width = max(len(space.name) for space in registered)
        for space in registered:
            print(f"{space.name:<{width}}  {space.description}")
        return 0
    if not args.space:
        parser.print_usage(sys.stderr)
        print("error: choose a space with --space NAME (see --list-spaces).", file=sys.stderr)
        return 2
    try:
        spaces.get_space(args.space)
    except spaces.SpaceError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(
        f"error: the Ray search is not built yet; run one trial of {args.space} with "
        f"`python -m trainers --space {args.space} --out runs/{args.space}`.",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    sys.exit(main())
