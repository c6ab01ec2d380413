"""What a trial refuses before its first step, checked without training: a search's driver
runs `check_runnable` for every model its space can draw, so a bad setting fails once, in one
sentence, instead of in every trial on the cluster."""

from __future__ import annotations

import copy

import torch

from trainers.config import TrainConfig, TrainerError
from trainers.data import Splits
from trainers.frontends import frontend_shape
from trainers.layers import select_trainable
from trainers.models import build_model, check_pretrained_file
from trainers.steps import clipping_engine


def check_fits_data(config: TrainConfig, n_train: int) -> None:
    """The settings that only the data set's size can refuse."""
    if config.batch_size > n_train:
        raise TrainerError(
            f"batch_size={config.batch_size} exceeds the {n_train} training examples; lower it."
        )
    if config.tan_reference_batch is not None and config.tan_reference_batch > n_train:
        raise TrainerError(
            f"tan_reference_batch={config.tan_reference_batch} exceeds the {n_train} training "
            "examples; lower it."
        )
    if config.private and config.delta >= 1.0 / n_train:
        raise TrainerError(
            f"delta={config.delta} is not below 1/n = {1.0 / n_train:.2g} for n={n_train} "
            "training examples, which permits releasing whole examples; lower delta."
        )


def check_runnable(configs: list[TrainConfig], splits: Splits) -> None:
    """Everything `train` would refuse before its first step, checked without training, for
    each config: the data's size, the weights file, the model (known, loadable, made
    DP-compatible), the layer selection and the clipping engine. A search's driver calls it
    for every model its space can draw, so a bad setting fails there in one sentence instead
    of in every trial on the cluster. Each distinct model is built once."""
    built: dict = {}
    for config in configs:
        check_fits_data(config, len(splits.train))
        check_pretrained_file(config)
        channels, size = frontend_shape(
            config, splits.channels, config.image_size or splits.image_size
        )
        key = (config.model, config.pretrained, config.pretrained_file, size, channels,
               config.seed)  # fmt: skip
        if key not in built:
            built[key] = build_model(
                config, in_channels=channels, num_classes=splits.num_classes, image_size=size
            )
        model = copy.deepcopy(built[key])
        select_trainable(model, config)
        if config.private:
            example = torch.zeros(1, channels, size, size)  # data-independent
            clipping_engine(config, model, example)
