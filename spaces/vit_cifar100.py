"""DP fine-tuning of an ImageNet-21k-pretrained ViT-B/16 on CIFAR-100.

Transformers fine-tune well under DP (Mehta et al. 2023; Bu et al. 2022): LayerNorm instead of
BatchNorm, and a zero-initialised head. The space searches which layers train — all, the last
blocks, LayerNorms + head, biases + head (BitFit), or the head alone (linear probing on cached
features) — with learning rate, batch, clip norm and ε. GPU.
"""

from spaces.distributions import Choice, IntUniform, LogUniform
from spaces.registry import SearchSpace, register_space

register_space(
    SearchSpace(
        name="vit_cifar100",
        description="ImageNet-21k-pretrained ViT-B/16 fine-tuned with DP-SGD on CIFAR-100 (GPU).",
        fixed={
            "dataset": "cifar100",
            "model": "vit_base_patch16_224.augreg_in21k",
            "pretrained": True,
            "image_size": 224,
            "optimizer": "sgd",
            "momentum": 0.9,
            "delta": 1e-5,
            "max_physical_batch_size": 32,
        },
        searched={
            "learning_rate": LogUniform(low=0.01, high=2.0, default=0.25),
            "batch_size": Choice(values=(512, 1024, 2048), default=1024),
            "max_grad_norm": LogUniform(low=0.1, high=2.0, default=1.0),
            "epochs": IntUniform(low=1, high=5, default=2),
            "trainable_layers": Choice(
                values=("all", "last_k_blocks", "norms_and_head", "bias_and_head", "head"),
                default="all",
            ),
            "target_epsilon": Choice(values=(1.0, 2.0, 4.0, 8.0), default=8.0),
        },
        smoke={"model": "test_vit", "synthetic_classes": 100},
    )
)
