"""DP fine-tuning for multi-label chest X-ray classification on CheXpert (Irvin et al. 2019).

An ImageNet-pretrained ResNet-50 (timm; BatchNorm becomes GroupNorm for DP) fine-tuned on the
five competition findings; the search maximises mean validation ROC-AUC and the results layer
reports per-group AUC (sex by default; age or race with `--set group_attribute=…`), the
fairness question DP raises on medical data. Needs the local dataset: `--set data_dir=DIR`
(the CheXpert-v1.0-small folder); GPU. A smoke run generates a tiny synthetic directory in the
same format.
"""

from spaces.distributions import Choice, IntUniform, LogUniform
from spaces.registry import SearchSpace, register_space

register_space(
    SearchSpace(
        name="chexpert",
        description="ImageNet-pretrained ResNet-50, DP fine-tuned on CheXpert's 5 findings (GPU).",
        fixed={
            "dataset": "chexpert",
            "model": "resnet50",
            "pretrained": True,
            "image_size": 224,
            "group_attribute": "sex",
            "uncertain_label": "ones",
            "optimizer": "sgd",
            "momentum": 0.9,
            "validation_fraction": 0.025,
            "delta": 1e-6,
            "max_physical_batch_size": 64,
        },
        searched={
            "learning_rate": LogUniform(low=0.01, high=2.0, default=0.25),
            "batch_size": Choice(values=(512, 1024, 2048), default=1024),
            "max_grad_norm": LogUniform(low=0.1, high=2.0, default=1.0),
            "epochs": IntUniform(low=1, high=5, default=2),
            "trainable_layers": Choice(values=("all", "last_k_blocks", "head"), default="all"),
            "target_epsilon": Choice(values=(1.0, 2.0, 4.0, 8.0), default=8.0),
        },
        metric="val_auc",
        smoke={"model": "test_resnet", "image_size": 32, "validation_fraction": 0.2},
    )
)
