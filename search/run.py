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

import accounting  # noqa: E402
import spaces  # noqa: E402
from search.arguments import build_parser  # noqa: E402
from search.cluster import start_ray  # noqa: E402
from search.plan import SearchError, SearchPlan, make_plan  # noqa: E402
from search.tuner import StorageError, build_tuner, storage_problem  # noqa: E402
from trainers import TrainerError, parse_overrides, writable_directory  # noqa: E402


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
    except (
        SearchError,
        spaces.SpaceError,
        TrainerError,
        accounting.AccountingError,
    ) as error:
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
    """Plan (or reload the plan), start Ray, write the plan, run the trials, summarise."""
    plan, experiment_dir = _resumed_plan(args) if args.resume else _new_plan(args)
    if plan.num_trials > 0:
        # Before anything is written: an unreachable cluster leaves no folder.
        start_ray(
            address=args.address,
            num_cpus=args.num_cpus,
            dashboard_host=args.dashboard_host,
            dashboard_port=args.dashboard_port,
        )
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

    results = _fit(plan, experiment_dir, args)
    _, markdown = summarize(experiment_dir)
    _warn_about_missing_trials(results, plan)
    print()
    print(markdown)
    print(
        f"Experiment directory: {experiment_dir} (tables, frontier.png; re-export with "
        f"python results/export.py {experiment_dir})"
    )
    ray.shutdown()
    return 0


def _resumed_plan(args) -> tuple[SearchPlan, Path]:
    if not args.name:
        raise SearchError("--resume needs --name (and --storage-path) of the experiment.")
    _check_name(args.name)
    experiment_dir = (args.storage_path / args.name).resolve()
    return SearchPlan.load(experiment_dir), experiment_dir


def _new_plan(args) -> tuple[SearchPlan, Path]:
    """Check the request in the order a user would fix it, then fix the plan (nothing is
    written yet)."""
    if not args.space:
        raise SearchError("choose a space with --space NAME (see --list-spaces).")
    if args.num_samples < 1:
        raise SearchError(f"--num-samples must be ≥ 1 (got {args.num_samples}).")
    _check_resources(args)
    _check_name(args.name)
    writable_directory(args.storage_path, "--storage-path")
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
        budgets=_budgets(args.budgets),
        reproducible=args.reproducible,
        retry_epochs=args.retry_epochs,
    )
    if plan.fixed.get("device") == "cuda" and args.gpus_per_trial == 0:
        raise SearchError("--set device=cuda needs --gpus-per-trial above 0 (e.g. 1).")
    return plan, experiment_dir


def _check_resources(args) -> None:
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
    if args.dashboard_port is not None:
        from search.cluster import port_is_free

        if not 1 <= args.dashboard_port <= 65535:
            raise SearchError(f"--dashboard-port must be in 1-65535 (got {args.dashboard_port}).")
        if args.address is None and not port_is_free(args.dashboard_host, args.dashboard_port):
            raise SearchError(
                f"--dashboard-port {args.dashboard_port} is taken (another search or Ray?); "
                "pick another, or leave it out to take a free one."
            )
    if args.num_cpus is not None and args.num_cpus < 1:
        raise SearchError(f"--num-cpus must be ≥ 1 (got {args.num_cpus}).")


def _fit(plan: SearchPlan, experiment_dir: Path, args):
    """Run the trials with Ray Tune; a full or read-only experiment directory is a
    StorageError (the search stops cleanly, the ledger keeps what ran)."""
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
    return results


def _warn_about_missing_trials(results, plan: SearchPlan) -> None:
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
