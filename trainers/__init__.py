"""The trainer: one DP-SGD trial, `train(config, report)`, a plain loop that runs with or
without Ray. It owns the trial's data splits, model, clipping engines, validation release and
checkpoints, records the mechanism it executes (q, σ, T, validation releases) and asks
`accounting` for ε; it does no privacy math itself.
"""

# Lazy: `import trainers` is instant; a name's module (and what it needs:
# torch, Opacus, timm) loads on first use, so a command line answers a typo in well under a second.
_SOURCES = {
    "audit_trial": "trainers.audit",
    "CANARY_KINDS": "trainers.canaries",
    "check_runnable": "trainers.checks",
    "TrainConfig": "trainers.config",
    "TrainerError": "trainers.config",
    "make_config": "trainers.config",
    "parse_overrides": "trainers.command_line",
    "writable_directory": "trainers.command_line",
    "add_settings_argument": "trainers.command_line",
    "load_splits": "trainers.data",
    "evaluate": "trainers.evaluation",
    "MetricsCallback": "trainers.loop",
    "train": "trainers.loop",
    "MechanismPlan": "trainers.mechanism",
    "plan_mechanism": "trainers.mechanism",
    "planned_steps": "trainers.mechanism",
    "smoke_config": "trainers.smoke",
}

__all__ = [
    "CANARY_KINDS",
    "MechanismPlan",
    "MetricsCallback",
    "TrainConfig",
    "TrainerError",
    "add_settings_argument",
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


def __getattr__(name: str):
    if name not in _SOURCES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(_SOURCES[name]), name)
    globals()[name] = value  # once loaded, a plain attribute
    return value
