"""`python search/run.py --space NAME`: a differentially private hyperparameter search.

Ray Tune schedules Opacus DP-SGD trials of a registered search space on the Ray cluster that
is there (an embedded local one by default), writes every executed step to the experiment's
privacy ledger, and ends with the search ε, the released model and a Pareto table.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# Trials checkpoint every epoch (small files); Tune's warning about frequent experiment
# snapshots would repeat for every epoch of every trial.
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")

import accounting  # noqa: E402
import spaces  # noqa: E402
from search.plan import SearchError, SearchPlan, make_plan  # noqa: E402
from search.tuner import StorageError, build_tuner, storage_problem  # noqa: E402
from trainers import TrainerError, parse_overrides  # noqa: E402
from trainers.config import writable_directory  # noqa: E402

DASHBOARD_PORT = 8265


def _parser() -> argparse.ArgumentParser:
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
    parser.add_argument("--space", metavar="NAME", help="the search space (see --list-spaces)")
    parser.add_argument("--list-spaces", action="store_true", help="list spaces and exit")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="fix a setting for every trial (repeatable)",
    )
    privacy = parser.add_argument_group("privacy of the search")
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
        default="poisson",
        choices=accounting.TRIAL_DISTRIBUTIONS,
        help="random-stopping: distribution of K (mean --num-samples)",
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
    search = parser.add_argument_group("the search")
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
        "--seed",
        type=int,
        default=0,
        help="seeds the searcher (never K, sampling or noise: those are secret)",
    )
    resources = parser.add_argument_group("resources and cluster")
    resources.add_argument("--cpus-per-trial", type=float, default=1.0)
    resources.add_argument(
        "--gpus-per-trial", type=float, default=0.0, help="fractions share a GPU, e.g. 0.5"
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
    storage = parser.add_argument_group("experiment directory (STORAGE_PATH/NAME)")
    storage.add_argument("--storage-path", type=Path, default=Path("runs"), metavar="DIR")
    storage.add_argument("--name", help="default: SPACE-YYYYmmdd-HHMMSS")
    storage.add_argument(
        "--resume",
        action="store_true",
        help="continue the interrupted experiment STORAGE_PATH/NAME",
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
    try:
        return _run(args)
    except (SearchError, spaces.SpaceError, TrainerError, accounting.AccountingError) as error:
        return _fail(f"error: {error}")
    except StorageError as error:
        return _fail(
            f"error: the experiment directory {error.directory} {error.problem}, so the search "
            f"stopped; free space or make it writable, then continue it with --resume --name "
            f"{error.directory.name} (the privacy ledger keeps every step already run)."
        )
    except OSError as error:  # the experiment directory filled up or turned read-only
        where = error.filename or args.storage_path
        return _fail(
            f"error: cannot write {where} ({error.strerror or error}); free space or fix its "
            "permissions, then continue with --resume --name NAME (the ledger keeps every "
            "step already run)."
        )


def _fail(message: str) -> int:
    """Stop Ray first, then print the one sentence: trial workers torn down at exit print
    their last words (Ray forwards them), which must not bury the reason the search stopped."""
    if "ray" in sys.modules:
        import ray

        if ray.is_initialized():
            ray.shutdown()
    print(message, file=sys.stderr)
    return 2


def _run(args) -> int:
    if args.resume:
        if not args.name:
            raise SearchError("--resume needs --name (and --storage-path) of the experiment.")
        _check_name(args.name)
        experiment_dir = (args.storage_path / args.name).resolve()
        plan = SearchPlan.load(experiment_dir)
    else:
        if not args.space:
            raise SearchError("choose a space with --space NAME (see --list-spaces).")
        if args.num_samples < 1:
            raise SearchError(f"--num-samples must be ≥ 1 (got {args.num_samples}).")
        for flag, value in (
            ("--cpus-per-trial", args.cpus_per_trial),
            ("--gpus-per-trial", args.gpus_per_trial),
            ("--max-concurrent", args.max_concurrent),
            ("--max-failures", args.max_failures),
        ):
            if value < 0:
                raise SearchError(f"{flag} must be ≥ 0 (got {value}).")
        if args.cpus_per_trial == 0 and args.gpus_per_trial == 0:
            raise SearchError("a trial needs a CPU or a GPU: give --cpus-per-trial above 0.")
        if args.num_cpus is not None and args.num_cpus < 1:
            raise SearchError(f"--num-cpus must be ≥ 1 (got {args.num_cpus}).")
        _check_name(args.name)
        writable_directory(args.storage_path, "--storage-path")
        name = args.name or f"{args.space}-{time.strftime('%Y%m%d-%H%M%S')}"
        experiment_dir = (args.storage_path / name).resolve()
        if experiment_dir.exists():
            raise SearchError(
                f"{experiment_dir} already exists; continue it with --resume, or pick another "
                "--name."
            )
        searcher = args.searcher or (
            "random" if args.search_accounting == "random-stopping" else "optuna"
        )
        plan = make_plan(
            space_name=args.space,
            overrides=parse_overrides(args.overrides),
            num_samples=args.num_samples,
            budget_epsilon=args.target_epsilon,
            delta=args.delta,
            mode=args.search_accounting,
            trials_distribution=args.trials_distribution,
            eta=args.eta,
            searcher=searcher,
            scheduler=args.scheduler,
            seed=args.seed,
            budgets=_budgets(args.budgets),
            reproducible=args.reproducible,
            retry_epochs=args.retry_epochs,
        )
        if plan.fixed.get("device") == "cuda" and args.gpus_per_trial == 0:
            raise SearchError("--set device=cuda needs --gpus-per-trial above 0 (e.g. 1).")
    if plan.num_trials > 0:
        _start_ray(args)  # before anything is written: an unreachable cluster leaves no folder
    if not args.resume:
        try:
            experiment_dir.mkdir(parents=True)
        except OSError as error:
            raise SearchError(
                f"cannot create {experiment_dir} ({error.strerror}); choose another --storage-path."
            ) from None
        plan.save(experiment_dir)
    _describe(plan, experiment_dir)
    if plan.num_trials == 0:
        print("The system drew no trial: nothing runs and nothing is released (ε = 0).")
        return 0

    import ray

    from search.summary import summarize

    tuner = build_tuner(
        plan,
        experiment_dir=experiment_dir,
        cpus_per_trial=args.cpus_per_trial,
        gpus_per_trial=args.gpus_per_trial,
        max_concurrent=args.max_concurrent,
        max_failures=args.max_failures,
        resume=args.resume,
    )
    try:
        results = tuner.fit()
    except Exception as error:  # Tune wraps what its callbacks raise
        problem = storage_problem(experiment_dir)
        if problem is None:
            raise
        raise StorageError(experiment_dir, problem) from error
    problem = storage_problem(experiment_dir)  # it may have filled up at the very end
    if problem is not None:
        raise StorageError(experiment_dir, problem)
    _, markdown = summarize(experiment_dir)
    if results.errors:
        first = str(results.errors[0]).strip().splitlines()[-1][:200]
        print(
            f"warning: {len(results.errors)} trial(s) failed after all retries (first: {first}); "
            "their reported steps are in the ledger; see error.txt in their trial folders.",
            file=sys.stderr,
        )
    if len(results) < plan.num_trials:
        print(
            "warning: not every planned trial ran: Tune's saved state lost the others (the "
            "experiment directory filled up or was damaged mid-search). The ledger counts "
            "every step that ran; start a new search for more trials.",
            file=sys.stderr,
        )
    print()
    print(markdown)
    print(
        f"Experiment directory: {experiment_dir} (tables, frontier.png; re-export with "
        f"python results/export.py {experiment_dir})"
    )
    ray.shutdown()
    return 0


def _check_reachable(address: str) -> None:
    """Ray retries an unreachable head for minutes: try its port once, briefly, first."""
    import socket

    host, _, port = address.rpartition(":")
    if address == "auto" or "://" in address or not port.isdigit():
        return  # "auto" reads the local cluster's address file; clients have their own timeout
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=10).close()
    except OSError as error:
        raise _no_cluster(address, error.strerror or str(error)) from None


def _no_cluster(address: str, reason: str) -> SearchError:
    return SearchError(
        f"cannot reach a Ray cluster at {address} ({reason}); start it with `ray start "
        "--head`, check the address, or drop --address to run locally."
    )


def _check_name(name: str | None) -> None:
    """An experiment name is one folder inside --storage-path, never a path out of it."""
    if name is None:
        return
    if not name.strip() or name in (".", "..") or "/" in name or os.sep in name or "\0" in name:
        raise SearchError(
            f"--name must be one folder name (got {name!r}); put the folder's location in "
            "--storage-path."
        )


def _budgets(text: str | None) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise SearchError(f"--budgets {text!r} is not a comma-separated list of numbers.") from None
    if not values or any(not (v > 0 and v < float("inf")) for v in values):
        raise SearchError(f"--budgets {text!r}: every budget ε must be a positive number.")
    return values


def _describe(plan, experiment_dir: Path) -> None:
    privacy = plan.privacy
    print(f"Experiment directory: {experiment_dir}")
    what = {
        "composition": f"{plan.num_trials} trials, composed",
        # K stays secret: printing it would turn the bound back into best-of-K.
        "random-stopping": f"K trials drawn secretly from {privacy.distribution.describe()} "
        "(K is kept in search.json and never shown)"
        if privacy.distribution
        else "",
        "none": f"{plan.num_trials} trials; ε of ONE trial only (does NOT cover the search)",
    }[plan.mode]
    print(f"Search: {plan.space}, {what}, searcher {plan.searcher}, scheduler {plan.scheduler}")
    if plan.budget_epsilon is not None:
        worst = privacy.candidates[0]
        print(
            f"Budget: ε = {plan.budget_epsilon:g} at δ = {plan.delta:g} for the whole search → "
            f"every trial runs with σ = {privacy.noise_multiplier:.4f} (planned for q ≤ "
            f"{worst.sample_rate:.4g}, T ≤ {worst.steps})"
        )
    else:
        print(
            f"No budget given: each trial calibrates σ to its own target_epsilon; the plan "
            f"bounds the {len(privacy.candidates)} mechanism(s) the space can run."
        )
    print(f"Validation: {privacy.describe_validation()}.")
    if privacy.retry_epochs:
        where = "per trial" if plan.mode == "random-stopping" else "in all"
        print(f"Retries: room for {privacy.retry_epochs} epoch(s) re-run after crashes {where} "
              "(--retry-epochs), included in the search ε.")  # fmt: skip
    print(
        f"Search ε (the DP release's, fixed now): {accounting.show_epsilon(privacy.epsilon())} "
        f"at δ = {plan.delta:g}; a trial or retry that would exceed it never starts."
    )
    if privacy.reproducible:
        print("RESEARCH RUN: sampling and noise are reproducible from known seeds; NOT a DP "
              "release.")  # fmt: skip


def _start_ray(args) -> None:
    import ray

    if args.address:
        _check_reachable(args.address)
        try:
            ray.init(address=args.address)
        except (ConnectionError, ValueError, RuntimeError) as error:
            reason = (str(error).strip() or type(error).__name__).splitlines()[0][:160]
            raise _no_cluster(args.address, reason) from None
        print(f"Joined the Ray cluster at {args.address}.")
        return
    if args.dashboard_host not in ("127.0.0.1", "localhost", "::1"):
        print(
            f"warning: the Ray dashboard listens on {args.dashboard_host}, reachable from other "
            "machines; its API still requires the token in ~/.ray/auth_token.",
            file=sys.stderr,
        )
    context = ray.init(
        num_cpus=args.num_cpus,
        include_dashboard=True,
        dashboard_host=args.dashboard_host,
        dashboard_port=DASHBOARD_PORT,
    )
    url = context.dashboard_url
    if url:
        print(
            f"Ray dashboard: http://{url} (token auth: send 'Authorization: Bearer "
            "$(cat ~/.ray/auth_token)', or open the URL and paste the token)"
        )


if __name__ == "__main__":
    sys.exit(main())
