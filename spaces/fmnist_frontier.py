"""Question 2 of DESIGN.md on Fashion-MNIST: what accuracy does the recipe reach at ε = 1, 2, 4, 8?

Each trial draws its own target ε, so the search traces an accuracy-versus-ε frontier; Optuna
then optimises accuracy and ε together (multi-objective). Trials take ~10-30 s on 2 CPU cores.
"""

from spaces.distributions import Choice, IntUniform, LogUniform
from spaces.registry import SearchSpace, register_space

register_space(
    SearchSpace(
        name="fmnist_frontier",
        description="Accuracy vs ε on Fashion-MNIST: each trial targets ε ∈ {1, 2, 4, 8} (CPU).",
        fixed={
            "dataset": "fashion_mnist",
            "model": "tramer_boneh_cnn",
            "optimizer": "sgd",
            "momentum": 0.9,
            "batch_size": 2048,
            "delta": 1e-5,
            "max_physical_batch_size": 1024,
        },
        searched={
            "target_epsilon": Choice(values=(1.0, 2.0, 4.0, 8.0), default=8.0),
            "learning_rate": LogUniform(low=1.0, high=8.0, default=4.0),
            "max_grad_norm": LogUniform(low=0.05, high=0.5, default=0.1),
            "epochs": IntUniform(low=1, high=3, default=2),
        },
    )
)
