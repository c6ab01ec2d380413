"""The trainer: one DP-SGD trial, `train(config, report)`, a plain loop that runs with or
without Ray. It owns the trial's data splits, model, clipping engines, validation release and
checkpoints, records the mechanism it executes (q, σ, T, validation releases) and asks
`accounting` for ε; it does no privacy math itself.
"""

from trainers.audit import audit_trial
from trainers.canaries import CANARY_KINDS
from trainers.checks import check_runnable
from trainers.config import (
    TrainConfig,
    TrainerError,
    make_config,
    parse_overrides,
    writable_directory,
)
from trainers.data import load_splits
from trainers.evaluation import evaluate
from trainers.loop import MetricsCallback, train
from trainers.mechanism import MechanismPlan, plan_mechanism, planned_steps
from trainers.smoke import smoke_config

__all__ = [
    "CANARY_KINDS",
    "MechanismPlan",
    "MetricsCallback",
    "TrainConfig",
    "TrainerError",
    "audit_trial",
    "check_runnable",
    "evaluate",
    "load_splits",
    "make_config",
    "parse_overrides",
    "plan_mechanism",
    "planned_steps",
    "smoke_config",
    "train",
    "writable_directory",
]
