"""DP fine-tuning of an ImageNet-pretrained NFNet-F0 on CIFAR-10 (De et al. 2022).

Needs a GPU for useful speed. Offline, give the weights with
`--set pretrained_file=PATH` (timm's dm_nfnet_f0 .safetensors) and CIFAR-10 with
`--set data_dir=DIR`. Augmentation multiplicity, EMA and layer selection arrive with the
paper-recipes work; the space already varies the per-trial ε to trace a frontier.
"""

from spaces.distributions import Choice, IntUniform, LogUniform
from spaces.registry import SearchSpace, register_space

register_space(
    SearchSpace(
        name="nfnet_cifar",
        description="ImageNet-pretrained dm_nfnet_f0 fine-tuned with DP-SGD on CIFAR-10 (GPU).",
        fixed={
            "dataset": "cifar10",
            "model": "dm_nfnet_f0",
            "pretrained": True,
            "image_size": 224,
            "optimizer": "sgd",
            "momentum": 0.0,
            "delta": 1e-5,
            "max_physical_batch_size": 64,
        },
        searched={
            "learning_rate": LogUniform(low=0.5, high=8.0, default=4.0),
            "batch_size": Choice(values=(1024, 2048, 4096), default=4096),
            "max_grad_norm": LogUniform(low=0.1, high=2.0, default=1.0),
            "epochs": IntUniform(low=1, high=10, default=5),
            "target_epsilon": Choice(values=(1.0, 2.0, 4.0, 8.0), default=8.0),
        },
    )
)
