"""Tramèr & Boneh (ICLR 2021): DP-SGD on public ScatterNet features of Fashion-MNIST.

The scattering transform (J=2, L=8: 81×7×7 features per image) is fixed and public, computed
once per data set (`frontend=scatternet`); each example's features are normalised by
GroupNorm without a learned scale (data-independent: free). On it: a linear classifier (their
best, 89.7 % at ε = 3 with the search uncounted) or their small CNN (89.0 %).

Defaults are their linear recipe (B=8192, lr=16, momentum 0.9, C=0.1, 27 groups, 40 epochs);
learning rate and clip norm range over a factor of 2 either side of it. The recipe is public,
but it was itself tuned on Fashion-MNIST without counting that search: on a data set of your
own, widen the ranges.
"""

from spaces.distributions import Choice, LogUniform
from spaces.registry import SearchSpace, register_space

register_space(
    SearchSpace(
        name="fmnist_scatternet",
        description="Tramèr & Boneh's ScatterNet features + linear or CNN on Fashion-MNIST, ε=3.",
        fixed={
            "dataset": "fashion_mnist",
            "frontend": "scatternet",
            "optimizer": "sgd",
            "momentum": 0.9,
            "target_epsilon": 3.0,
            "delta": 1e-5,
            "max_physical_batch_size": 2048,
            "eval_batch_size": 2048,
        },
        searched={
            "model": Choice(values=("scatter_linear", "scatter_cnn"), default="scatter_linear"),
            "learning_rate": LogUniform(low=8.0, high=32.0, default=16.0),
            "batch_size": Choice(values=(4096, 8192), default=8192),
            "max_grad_norm": LogUniform(low=0.05, high=0.2, default=0.1),
            "frontend_norm_groups": Choice(values=(9, 27, 81), default=27),
            "epochs": Choice(values=(20, 40), default=40),
        },
    )
)
