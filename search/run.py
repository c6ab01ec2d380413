"""`python search/run.py --space NAME`: a differentially private hyperparameter search.

Ray Tune schedules Opacus DP-SGD trials of a registered search space on the Ray cluster that
is there (an embedded local one by default), writes every executed step to the experiment's
privacy ledger, and ends with the search ε, the released model and a Pareto table.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# Trials checkpoint every epoch (small files); Tune's warning about frequent experiment
# snapshots would repeat for every epoch of every trial.
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")

try:  # light imports only: a typo is answered before torch or Ray loads
    import accounting
    import spaces
    from search.arguments import build_parser
    from search.errors import SearchError
    from trainers import TrainerError
except ModuleNotFoundError as missing:  # run by a Python that lacks the project
    sys.exit(
        f"error: {sys.executable} cannot import {missing.name!r}: run the search with the "
        "project's virtual environment, `.venv/bin/python search/run.py …` (or `source "
        ".venv/bin/activate` first); create it with the README's first command."
    )

EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for Ctrl-C


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
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
    except KeyboardInterrupt:
        _stop_ray()
        print(
            f"\nInterrupted; continue with {_resume_command(args)}"
            if getattr(args, "experiment_dir", None)
            else "\nInterrupted before the search started: nothing was written.",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    except OSError as error:  # the experiment directory filled up or turned read-only
        where = error.filename or args.storage_path
        return _fail(
            f"error: cannot write {where} ({error.strerror or error}); free space or fix its "
            f"permissions, then continue with {_resume_command(args)} (the ledger keeps every "
            "step already run)."
        )


def _fail(message: str) -> int:
    """Stop Ray first, then print the one sentence: trial workers torn down at exit print
    their last words (Ray forwards them), which must not bury the reason the search stopped."""
    _stop_ray()
    print(message, file=sys.stderr)
    return 2


def _stop_ray() -> None:
    if "ray" in sys.modules:
        import ray

        if ray.is_initialized():
            ray.shutdown()


def _run(args) -> int:
    """Check what was typed (fast), plan, start Ray and check it can run a trial, and only
    then write: the experiment directory, the plan, the trials, the summary."""
    from search.preflight import check_name, check_request, warn_relative_storage

    if args.resume:
        if not args.name:
            raise SearchError("--resume needs --name (and --storage-path) of the experiment.")
        check_name(args.name)
        from search.plan import SearchPlan

        experiment_dir = (args.storage_path / args.name).resolve()
        plan = SearchPlan.load(experiment_dir)
    else:
        check_request(args)
        plan, experiment_dir = _new_plan(args)
    warn_relative_storage(args.storage_path)
    if plan.num_trials > 0:
        _start_cluster(args)
    if not args.resume:
        try:
            experiment_dir.mkdir(parents=True)
        except OSError as error:
            raise SearchError(
                f"cannot create {experiment_dir} ({error.strerror}); choose another --storage-path."
            ) from None
        plan.save(experiment_dir)
    args.experiment_dir = experiment_dir  # from here on, an interruption can be resumed
    _describe(plan, experiment_dir)
    if plan.num_trials == 0:
        print("The system drew no trial: nothing runs and nothing is released (ε = 0).")
        return 0
    return _search(plan, experiment_dir, args)


def _start_cluster(args) -> None:
    """Start or join Ray, and refuse (before anything is written) a trial no node can hold."""
    from search.cluster import start_ray
    from search.preflight import check_trial_fits

    start_ray(
        address=args.address,
        num_cpus=args.num_cpus,
        dashboard_host=args.dashboard_host,
        dashboard_port=args.dashboard_port,
        verbose=args.verbose,
    )
    check_trial_fits(cpus=args.cpus_per_trial, gpus=args.gpus_per_trial, joined=args.address)


def _search(plan, experiment_dir: Path, args) -> int:
    """Run the trials; a finished search prints its DP release, an interrupted one only how
    to continue it."""
    from search.cluster import linger_for_prometheus
    from search.interrupt import GracefulInterrupt
    from search.summary import summarize

    with GracefulInterrupt() as interrupt:
        results = _fit(plan, experiment_dir, args)
    linger_for_prometheus(args.address)
    if interrupt.received:
        _stop_ray()
        print(_interrupted_summary(plan, experiment_dir, args), file=sys.stderr)
        return EXIT_INTERRUPTED
    _, markdown = summarize(experiment_dir)
    _warn_about_missing_trials(results, plan)
    print()
    print(markdown)
    print(
        f"Experiment directory: {experiment_dir} (tables, frontier.png; re-export with "
        f"python results/export.py {experiment_dir})"
    )
    _stop_ray()
    return 0


def _interrupted_summary(plan, experiment_dir: Path, args) -> str:
    """What an interrupted search may say: no release, what the ledger holds, how to go on."""
    ledger = accounting.PrivacyLedger(experiment_dir / accounting.LEDGER_FILENAME)
    accounts = accounting.reduce_ledger(ledger.records())
    finished = sum(a.status != "running" for a in accounts.values())
    spent = plan.privacy.search_epsilon(accounts).spent
    return (
        f"Interrupted: the search is unfinished, so nothing is released (no DP-release report "
        f"for a partial search). Partial summary (analyst-only): {len(accounts)} trial(s) "
        f"started, {finished} ended; the ledger counts every step that ran (ε spent so far "
        f"{accounting.show_epsilon(spent)}; the plan's ε "
        f"{accounting.show_epsilon(plan.privacy.epsilon())} still bounds the whole search).\n"
        f"Continue it with: {_resume_command(args)}"
    )


def _resume_command(args) -> str:
    """The command that continues this search (its name once its directory exists)."""
    started = getattr(args, "experiment_dir", None)
    name = started.name if started else args.name or "NAME"
    storage = "" if args.storage_path == Path("runs") else f" --storage-path {args.storage_path}"
    return f"python search/run.py --name {name}{storage} --resume"


def _new_plan(args):
    """The plan of a new search (nothing is written yet)."""
    from search.plan import make_plan
    from search.preflight import parse_budgets
    from trainers import parse_overrides

    name = args.name or f"{args.space}-{time.strftime('%Y%m%d-%H%M%S')}"
    experiment_dir = (args.storage_path / name).resolve()
    if experiment_dir.exists():
        raise SearchError(
            f"{experiment_dir} already exists; continue it with --resume, or pick another --name."
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
        budgets=parse_budgets(args.budgets),
        reproducible=args.reproducible,
        retry_epochs=args.retry_epochs,
    )
    if plan.fixed.get("device") == "cuda" and args.gpus_per_trial == 0:
        raise SearchError("--set device=cuda needs --gpus-per-trial above 0 (e.g. 1).")
    return plan, experiment_dir


def _fit(plan, experiment_dir: Path, args):
    """Run the trials with Ray Tune; a full or read-only experiment directory stops the search
    with one sentence (the ledger keeps what ran; --resume continues it)."""
    from search.tuner import build_tuner, storage_problem

    tuner = build_tuner(
        plan,
        experiment_dir=experiment_dir,
        cpus_per_trial=args.cpus_per_trial,
        gpus_per_trial=args.gpus_per_trial,
        max_concurrent=args.max_concurrent,
        max_failures=args.max_failures,
        resume=args.resume,
        verbose=args.verbose,
    )
    try:
        results = tuner.fit()
    except Exception as error:  # Tune wraps what its callbacks raise
        problem = storage_problem(experiment_dir)
        if problem is None:
            raise
        raise _storage_failure(experiment_dir, problem) from error
    problem = storage_problem(experiment_dir)  # it may have filled up at the very end
    if problem is not None:
        raise _storage_failure(experiment_dir, problem)
    return results


def _storage_failure(experiment_dir: Path, problem: str) -> SearchError:
    return SearchError(
        f"the experiment directory {experiment_dir} {problem}, so the search stopped; free "
        f"space or make it writable, then continue it with --resume --name "
        f"{experiment_dir.name} (the privacy ledger keeps every step already run)."
    )


def _warn_about_missing_trials(results, plan) -> None:
    if results.errors:
        first = str(results.errors[0]).strip().splitlines()[-1][:200]
        print(
            f"warning: {len(results.errors)} trial(s) failed after all retries (first: {first}); "
            "their reported steps are in the ledger; see error.txt in their trial folders.",
            file=sys.stderr,
        )
    refused = [r for r in results if r.error is None and plan.metric not in (r.metrics or {})]
    if refused:
        print(
            f"warning: {len(refused)} trial(s) ended without a result: the privacy plan had no "
            "room left for them (a retry or a resumed trial re-runs steps it already spent; "
            "--retry-epochs sets that room). The ledger counts every step that ran.",
            file=sys.stderr,
        )
    if len(results) < plan.num_trials:
        print(
            "warning: not every planned trial ran: Tune's saved state lost the others (the "
            "experiment directory filled up or was damaged mid-search). The ledger counts "
            "every step that ran; start a new search for more trials.",
            file=sys.stderr,
        )


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
    if privacy.trials_choice:
        print(f"Trials: {privacy.trials_choice}.")
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


if __name__ == "__main__":
    sys.exit(main())
