"""One DP-SGD trial: `train(config, report)`, a plain loop that runs with or without Ray."""

from trainers.config import TrainConfig, TrainerError, make_config, parse_overrides
from trainers.loop import (
    MechanismPlan,
    Report,
    check_runnable,
    evaluate,
    plan_mechanism,
    planned_steps,
    train,
)

__all__ = [
    "MechanismPlan",
    "Report",
    "TrainConfig",
    "TrainerError",
    "check_runnable",
    "evaluate",
    "make_config",
    "parse_overrides",
    "plan_mechanism",
    "planned_steps",
    "train",
]
