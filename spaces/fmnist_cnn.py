"""Tramèr & Boneh (ICLR 2021): end-to-end tanh CNN on Fashion-MNIST at ε = 3, δ = 1e-5.

Defaults are their best recipe (86.0 % test accuracy): B=2048, lr=4, momentum 0.9, C=0.1,
40 epochs. The ranges around it are what they searched.
"""

from spaces.distributions import Choice, LogUniform
from spaces.registry import SearchSpace, register_space

register_space(
    SearchSpace(
        name="fmnist_cnn",
        description="Tramèr & Boneh's end-to-end tanh CNN on Fashion-MNIST at ε=3 (40 epochs).",
        fixed={
            "dataset": "fashion_mnist",
            "model": "tramer_boneh_cnn",
            "optimizer": "sgd",
            "target_epsilon": 3.0,
            "delta": 1e-5,
            "max_physical_batch_size": 1024,
        },
        searched={
            "learning_rate": LogUniform(low=0.5, high=8.0, default=4.0),
            "batch_size": Choice(values=(512, 1024, 2048, 4096), default=2048),
            "max_grad_norm": LogUniform(low=0.05, high=1.0, default=0.1),
            "momentum": Choice(values=(0.0, 0.5, 0.9), default=0.9),
            "epochs": Choice(values=(10, 20, 40), default=40),
        },
    )
)
