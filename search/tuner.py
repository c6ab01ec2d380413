"""Ray Tune orchestration: the Tuner, its searcher, scheduler, resources, resume, live metrics."""

from __future__ import annotations

import errno
import logging
import os
import time
import warnings
from pathlib import Path
from typing import Any

from ray.tune import Callback
from ray.tune.search.optuna import OptunaSearch

from search.live import SearchProgress
from search.plan import SearchPlan, searched_space
from search.trial import run_trial
from spaces import Choice, IntUniform, LogUniform, Uniform

log = logging.getLogger(__name__)


def to_tune(distribution) -> Any:
    """A space distribution as a Ray Tune search domain (the edge where Ray enters)."""
    from ray import tune

    if isinstance(distribution, Choice):
        return tune.choice(list(distribution.values))
    if isinstance(distribution, LogUniform):
        return tune.loguniform(distribution.low, distribution.high)
    if isinstance(distribution, Uniform):
        return tune.uniform(distribution.low, distribution.high)
    if isinstance(distribution, IntUniform):
        make = tune.lograndint if distribution.log else tune.randint
        return make(distribution.low, distribution.high + 1)  # Tune's upper end is exclusive
    raise TypeError(f"no Ray Tune domain for {distribution!r}")


def build_tuner(
    plan: SearchPlan,
    *,
    experiment_dir: Path,
    cpus_per_trial: float,
    gpus_per_trial: float,
    max_concurrent: int,
    max_failures: int,
    resume: bool,
    verbose: bool = False,
):
    """A Tuner for `plan` writing into `experiment_dir` (or restoring the one there). It prints
    our progress line; `verbose` adds Tune's own status tables."""
    from ray import tune

    # A trial the privacy plan refuses (a retry or resume with no room left) returns without
    # a result, by design. Tune accepts that from a fresh trial but, for one restored by
    # --resume, its strict check sees the restored config in the result and aborts the whole
    # search for the missing metric. Every result our trials do report carries the metric.
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    if not verbose:  # Tune's legacy reporter at verbosity 0 prints nothing but errors
        os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
        for name in ("ray.tune", "optuna"):
            logging.getLogger(name).setLevel(logging.WARNING)
        # It warns of every trial without results, e.g. one cut short by Ctrl-C.
        logging.getLogger("ray.tune.analysis").setLevel(logging.ERROR)
    # What every trial's reservation is checked against (the plan's Rényi filter).
    trial_plan = {
        "privacy": plan.privacy.to_dict(),
        "n_train": plan.n_train,
        "releases_validation": plan.releases_validation,
    }
    trainable = tune.with_resources(
        tune.with_parameters(
            dp_trial, fixed=plan.fixed, experiment_dir=str(experiment_dir), plan=trial_plan
        ),
        {"cpu": cpus_per_trial, "gpu": gpus_per_trial},
    )
    if resume:
        return tune.Tuner.restore(
            str(experiment_dir), trainable=trainable, resume_unfinished=True, resume_errored=True
        )
    searched = searched_space(plan)
    multi_objective = "target_epsilon" in searched
    search_alg = _searcher(plan, searched, experiment_dir, multi_objective, max_concurrent)
    # One metric for Tune unless Optuna optimises accuracy and ε together (then the searcher
    # holds both and ASHA, if used, ranks by accuracy alone).
    single_metric = not (plan.searcher == "optuna" and multi_objective)
    scheduler = _scheduler(plan, searched, own_metric=not single_metric)
    return tune.Tuner(
        trainable,
        param_space={key: to_tune(dist) for key, dist in searched.items()},
        tune_config=tune.TuneConfig(
            num_samples=plan.num_trials,
            search_alg=search_alg,
            scheduler=scheduler,
            max_concurrent_trials=(max_concurrent or None) if plan.searcher != "random" else None,
            # A trial process's start (Python, torch, the project) costs 4-5 s, most of a
            # small trial: let one process run trial after trial. Nothing carries over: a
            # trial seeds every generator it uses from its config (same seed, same numbers
            # in one process: tests/trainers/test_trainer.py).
            reuse_actors=True,
            metric=plan.metric if single_metric else None,
            mode="max" if single_metric else None,
        ),
        run_config=tune.RunConfig(
            name=experiment_dir.name,
            storage_path=str(experiment_dir.parent),
            failure_config=tune.FailureConfig(max_failures=max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            callbacks=[
                SearchProgress(plan, experiment_dir),
                StorageWatchdog(experiment_dir),
            ],
            verbose=1 if verbose else 0,
        ),
    )


def dp_trial(config, *, fixed, experiment_dir, plan):
    """The Tune trainable: the space's fixed settings plus this trial's sampled ones."""
    run_trial({**fixed, **config}, experiment_dir=experiment_dir, plan=plan)


def _searcher(plan, searched, experiment_dir, multi_objective, max_concurrent):
    if plan.searcher == "random":
        from ray.tune.search.basic_variant import BasicVariantGenerator

        # Its own limit: Tune ignores max_concurrent_trials for a SearchGenerator like this.
        return BasicVariantGenerator(random_state=plan.seed, max_concurrent=max_concurrent)
    import optuna
    from ray.tune.search import ConcurrencyLimiter

    # The study lives in the experiment directory so optuna-dashboard can open it:
    # optuna-dashboard EXPERIMENT_DIR/optuna_journal.log
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(experiment_dir / "optuna_journal.log"))
    )
    kwargs = {"metric": [plan.metric, "epsilon"], "mode": ["max", "min"]}
    kwargs = kwargs if multi_objective else {}
    epsilons = searched.get("target_epsilon")
    searcher = NamedOptunaSearch(
        objective_names=[plan.metric, "epsilon"] if multi_objective else [plan.metric],
        first_points=[{"target_epsilon": e} for e in getattr(epsilons, "values", ())],
        seed=plan.seed,
        storage=storage,
        study_name=plan.space,
        **kwargs,
    )
    return (
        ConcurrencyLimiter(searcher, max_concurrent=max_concurrent) if max_concurrent else searcher
    )


class NamedOptunaSearch(OptunaSearch):
    """Ray's OptunaSearch, with the study's objectives named (optuna-dashboard shows
    "val_accuracy" and "epsilon" instead of "Objective 0" and "Objective 1") and, on a new
    study, `first_points` queued first: for a space whose trials choose their ε, one trial at
    each ε it offers, so even a short search traces the whole accuracy-vs-ε frontier (the
    other hyperparameters are sampled as usual). The queue is fixed by the space alone, before
    any result exists, so it costs no privacy."""

    def __init__(self, *, objective_names: list[str], first_points=(), **kwargs) -> None:
        self.objective_names = list(objective_names)
        self.first_points = [dict(point) for point in first_points]
        super().__init__(**kwargs)

    def _setup_study(self, mode):
        super()._setup_study(mode)
        with warnings.catch_warnings():  # both are marked experimental by Optuna
            warnings.simplefilter("ignore")
            self._ot_study.set_metric_names(self.objective_names)
            if not self._ot_study.trials:  # a new study, not one a resume continues
                for point in self.first_points:
                    self._ot_study.enqueue_trial(point, skip_if_exists=True)


def _scheduler(plan, searched, *, own_metric: bool):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if plan.scheduler == "fifo":
        return FIFOScheduler()
    epochs = searched.get("epochs")
    max_epochs = max(epochs.values) if isinstance(epochs, Choice) else (
        epochs.high if epochs is not None else plan.fixed.get("epochs", 1)
    )  # fmt: skip
    return ASHAScheduler(
        time_attr="training_iteration",
        metric=plan.metric if own_metric else None,
        mode="max" if own_metric else None,
        max_t=max(int(max_epochs), 1),
        grace_period=1,
        reduction_factor=2,
    )


MIN_FREE_BYTES = 8 << 20
"""Below this much free space the experiment directory counts as full (checkpoints, the
ledger's lines and Tune's own state all need room)."""


def storage_problem(directory: Path) -> str | None:
    """Why `directory` cannot take the search's writes (None: it can): read-only, (nearly)
    full, or a small probe write fails."""
    try:
        stats = os.statvfs(directory)
    except OSError as error:
        return f"cannot be read ({error.strerror})"
    if stats.f_flag & os.ST_RDONLY:
        return "is on a read-only filesystem"
    free = stats.f_bavail * stats.f_frsize
    if free < MIN_FREE_BYTES:
        return f"is full ({free // 1024} KiB free)"
    probe = directory / ".write_probe"
    try:
        with open(probe, "wb") as f:
            f.write(b"\0" * 4096)
            f.flush()
            os.fsync(f.fileno())
        probe.unlink()
    except OSError as error:
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            return f"is full ({error.strerror})"
        return f"cannot be written ({error.strerror})"
    return None


class StorageError(Exception):
    """The experiment directory stopped taking writes during the search."""

    def __init__(self, directory: Path, problem: str) -> None:
        super().__init__(f"the experiment directory {directory} {problem}")
        self.directory, self.problem = directory, problem


class StorageWatchdog(Callback):
    """Ends the search as soon as the experiment directory cannot take its writes (full
    disk, read-only remount): trials would otherwise fail, retry and fail again, each retry a
    new attempt on the data. It aborts the driver rather than stopping the trials, so Tune's
    last saved state still lists them as unfinished and `--resume` continues them."""

    CHECK_EVERY_S = 1.0

    def __init__(self, experiment_dir: Path) -> None:
        self.experiment_dir = Path(experiment_dir)
        self.last_check = 0.0

    def on_step_begin(self, iteration, trials, **info):
        if time.monotonic() - self.last_check < self.CHECK_EVERY_S:
            return
        self.last_check = time.monotonic()
        problem = storage_problem(self.experiment_dir)
        if problem is not None:
            raise StorageError(self.experiment_dir, problem)
