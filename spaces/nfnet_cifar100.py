"""DP fine-tuning of an ImageNet-pretrained NFNet-F0 on CIFAR-100 (De et al. 2022, §4):
the CIFAR-10 recipe (spaces/nfnet_cifar.py) on the harder, 100-class data set (GPU)."""

from spaces import nfnet_cifar
from spaces.registry import SearchSpace, register_space

register_space(
    SearchSpace(
        name="nfnet_cifar100",
        description="ImageNet-pretrained dm_nfnet_f0 fine-tuned with DP-SGD on CIFAR-100 (GPU).",
        fixed={"dataset": "cifar100", **nfnet_cifar.FIXED},
        searched=nfnet_cifar.SEARCHED,
        smoke={**nfnet_cifar.SMOKE, "synthetic_classes": 100},
    )
)
