"""The quickstart's recipe at one ε = 3 per trial: a Fashion-MNIST search, ~10-30 s a trial on 2
CPU cores (the quickstart, `fmnist_frontier`, searches ε as well)."""

from spaces.distributions import IntUniform, LogUniform
from spaces.registry import SearchSpace, register_space

SPACE = register_space(
    SearchSpace(
        name="fmnist_quick",
        description="Tramèr & Boneh CNN on Fashion-MNIST, 1-3 epochs, ε=3 per trial (CPU).",
        fixed={
            "dataset": "fashion_mnist",
            "model": "tramer_boneh_cnn",
            "optimizer": "sgd",
            "momentum": 0.9,
            "batch_size": 2048,
            "target_epsilon": 3.0,
            "delta": 1e-5,
            "max_physical_batch_size": 1024,
        },
        searched={
            "learning_rate": LogUniform(low=1.0, high=8.0, default=4.0),
            "max_grad_norm": LogUniform(low=0.05, high=0.5, default=0.1),
            "epochs": IntUniform(low=1, high=3, default=2),
        },
    )
)
