"""Batches to model inputs: uint8 images → float, resized, normalised, on the device; cached
features (already model inputs) → the device."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from trainers.data import Splits


class ImagePreparer:
    """uint8 images → float, resized to the model's input size, normalised, on the device."""

    def __init__(self, model: nn.Module, splits: Splits, *, image_size, device, config) -> None:
        mean, std = splits.mean, splits.std
        cfg = getattr(model, "pretrained_cfg", None)
        if (config.pretrained or config.pretrained_file) and cfg and "mean" in cfg:
            # Pretrained weights expect the statistics they were trained with.
            mean, std = cfg["mean"], cfg["std"]
            if splits.channels == 1:
                mean, std = (sum(mean) / len(mean),), (sum(std) / len(std),)
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, device=device).view(1, -1, 1, 1)
        self.image_size = image_size
        self.device = device

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(self.device, non_blocking=True).float().div_(255)
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            x = F.interpolate(x, size=self.image_size, mode="bilinear", align_corners=False)
        return (x - self.mean) / self.std


class FeaturesToDevice:
    """`prepare` for cached features: they are model inputs already."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def __call__(self, features: torch.Tensor) -> torch.Tensor:
        return features.to(self.device, non_blocking=True)
