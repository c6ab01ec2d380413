"""One DP-SGD trial: `train(config, report)`, a plain loop that runs with or without Ray."""

from trainers.config import TrainConfig, TrainerError, make_config, parse_overrides
from trainers.loop import Report, evaluate, train

__all__ = [
    "Report",
    "TrainConfig",
    "TrainerError",
    "evaluate",
    "make_config",
    "parse_overrides",
    "train",
]
