"""WRN-16-4 trained from scratch on CIFAR-10 with DP-SGD: De et al.'s (2022) recipe.

Weight-standardised convs and GroupNorm (trainers.models.WideResNet), batch 4096, 875 steps
(here 80 epochs × 11 steps = 880 on the 45 000 training images left after the validation
split), augmentation multiplicity 16, EMA 0.999, learning rate 4, no momentum, clip 1. The
paper reports 56.8 / 65.9 / 72.6 / 79.5 % at ε = 1 / 2 / 4 / 8; the space searches ε among those
and learning rate and clip norm around the paper's values. GPU-days on a CPU: use a GPU.
"""

from spaces.distributions import Choice, LogUniform
from spaces.registry import SearchSpace, register_space

register_space(
    SearchSpace(
        name="wrn_cifar10",
        description="WRN-16-4 (WS + GroupNorm) from scratch on CIFAR-10, De et al.'s recipe (GPU).",
        fixed={
            "dataset": "cifar10",
            "model": "wrn_16_4",
            "optimizer": "sgd",
            "momentum": 0.0,
            "batch_size": 4096,
            "epochs": 80,
            "augmult": 16,
            "ema_decay": 0.999,
            "delta": 1e-5,
            "max_physical_batch_size": 256,
        },
        searched={
            "learning_rate": LogUniform(low=1.0, high=8.0, default=4.0),
            "max_grad_norm": LogUniform(low=0.5, high=2.0, default=1.0),
            "target_epsilon": Choice(values=(1.0, 2.0, 4.0, 8.0), default=8.0),
        },
        smoke={"model": "wrn_10_1", "augmult": 2, "ema_decay": 0.9},
    )
)
