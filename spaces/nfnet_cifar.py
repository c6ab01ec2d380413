"""DP fine-tuning of an ImageNet-pretrained NFNet-F0 on CIFAR-10 (De et al. 2022, §4).

De et al. reach 96.7 % at ε = 8 fine-tuning NFNet-F3 (ImageNet-pretrained) with batch 4096,
augmentation multiplicity 16, EMA and no momentum; NFNet-F0 is the smaller sibling timm ships
(`dm_nfnet_f0`). Needs a GPU for useful speed. Offline, give the weights with
`--set pretrained_file=PATH` (timm's dm_nfnet_f0 .safetensors) and CIFAR-10 with
`--set data_dir=DIR`. The space varies the per-trial ε, so one search traces a frontier, and
the recipe choices of the paper: image size, augmult, EMA, which layers train.
"""

from spaces.distributions import Choice, IntUniform, LogUniform
from spaces.registry import SearchSpace, register_space

FIXED = {
    "model": "dm_nfnet_f0",
    "pretrained": True,
    "optimizer": "sgd",
    "momentum": 0.0,
    "delta": 1e-5,
    "max_physical_batch_size": 64,
}
SEARCHED = {
    "learning_rate": LogUniform(low=0.5, high=8.0, default=4.0),
    "batch_size": Choice(values=(1024, 2048, 4096), default=4096),
    "max_grad_norm": LogUniform(low=0.1, high=2.0, default=1.0),
    "epochs": IntUniform(low=1, high=10, default=5),
    "image_size": Choice(values=(128, 192, 224), default=224),
    "augmult": Choice(values=(0, 4, 16), default=16),
    "ema_decay": Choice(values=(0.0, 0.999), default=0.999),
    "trainable_layers": Choice(values=("all", "last_k_blocks", "head"), default="all"),
    "target_epsilon": Choice(values=(1.0, 2.0, 4.0, 8.0), default=8.0),
}
SMOKE = {"model": "test_nfnet", "augmult": 2}
"""A smoke run: timm's tiny NFNet (same ScaledStdConv2d code path), 2 views per example."""

register_space(
    SearchSpace(
        name="nfnet_cifar",
        description="ImageNet-pretrained dm_nfnet_f0 fine-tuned with DP-SGD on CIFAR-10 (GPU).",
        fixed={"dataset": "cifar10", **FIXED},
        searched=SEARCHED,
        smoke=SMOKE,
    )
)
