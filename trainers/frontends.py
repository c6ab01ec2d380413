"""Frontends: a fixed, public feature extractor applied to each image on its own, before the
model trains (Tramèr & Boneh, ICLR 2021: "handcrafted" ScatterNet features beat end-to-end
CNNs under DP).

A frontend has no trainable parameters and reads nothing but the one image it transforms: a
record's features do not depend on any other record, so computing them costs no privacy, and
the DP-SGD mechanism that trains on them is the one accounted. Every trial of a search computes
the very same features, so they are computed once per data set and split and stored in the
feature cache (`trainers.features.compute_once`); a trial then trains on them directly.

Normalisation: Tramèr & Boneh normalised ScatterNet features either with a DP estimate of
their per-channel mean and variance (an extra accounted release) or with GroupNorm. We use
GroupNorm without a learned scale (`frontend_norm_groups`, 27 groups by default, their best
Fashion-MNIST setting): it normalises each example by its own statistics, data-independent and
so free. It runs as part of input preparation (`NormalisedFeatures`), so searching the groups
reuses one cache.
"""

from __future__ import annotations

import hashlib
import logging

import torch
from torch import nn
from torch.nn import functional as F

from trainers.config import TrainConfig, TrainerError
from trainers.data import Splits
from trainers.features import cache_path, compute_once, data_fields, digest, with_inputs

log = logging.getLogger(__name__)

SCATTERING_J = 2
"""Scales of the scattering transform (Tramèr & Boneh): the output is 4× smaller per side."""
SCATTERING_L = 8
"""Orientations: 1 + J·L + L²·J(J−1)/2 = 81 channels per input channel at J=2, L=8."""
FORMAT_VERSION = 1


class ScatterNet(nn.Module):
    """The 2-D scattering transform of Oyallon & Mallat (kymatio), as Tramèr & Boneh used it:
    (B, C, H, W) images in [0, 1] → (B, 81·C, H/4, W/4) features (sides divisible by 4:
    `frontend_shape` checks them). No parameters."""

    def __init__(self, height: int, width: int) -> None:
        super().__init__()
        # NOTE: `kymatio.torch` also imports the 3-D scattering, which fails with SciPy ≥ 1.17
        # (`sph_harm` was removed); the 2-D frontend alone imports cleanly.
        from kymatio.scattering2d.frontend.torch_frontend import ScatteringTorch2D

        self.scattering = ScatteringTorch2D(J=SCATTERING_J, shape=(height, width), L=SCATTERING_L)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.scattering(images.contiguous()).flatten(1, 2)


def frontend_key(config: TrainConfig) -> dict:
    """What a frontend's features depend on besides the images (for cache keys)."""
    return {"format": FORMAT_VERSION, "frontend": config.frontend, "J": SCATTERING_J,
            "L": SCATTERING_L, "kymatio": _kymatio_version()}  # fmt: skip


def frontend_shape(config: TrainConfig, channels: int, side: int) -> tuple[int, int]:
    """(channels, side) of the features `config.frontend` makes of channels × side² images,
    or a TrainerError saying which setting cannot work (checked before any feature exists)."""
    if config.frontend == "none":
        return channels, side
    if side % 4:
        raise TrainerError(
            f"the ScatterNet frontend needs image sides divisible by 4 (got {side}); set "
            "image_size to a multiple of 4."
        )
    out = channels * (1 + SCATTERING_J * SCATTERING_L + SCATTERING_L**2 * SCATTERING_J
                      * (SCATTERING_J - 1) // 2)  # fmt: skip
    groups = config.frontend_norm_groups
    if groups and out % groups:
        raise TrainerError(
            f"frontend_norm_groups={groups} does not divide the frontend's {out} channels; "
            "choose a divisor (e.g. 9, 27 or 81 for ScatterNet on greyscale)."
        )
    return out, side // 4


def frontend_splits(config: TrainConfig, splits: Splits, device: torch.device) -> Splits:
    """`splits` with every image replaced by its frontend features (float, (K, h, w)):
    computed once and cached, or in memory when `feature_cache` is off."""
    if config.frontend == "none":
        return splits
    size = config.image_size or splits.image_size
    frontend_shape(config, splits.channels, size)
    parts = {"train": splits.train, "validation": splits.validation, "test": splits.test}

    def compute() -> dict:
        log.info("frontend %s: computing features of %d images once", config.frontend,
                 sum(len(p) for p in parts.values() if p is not None))  # fmt: skip
        frontend = ScatterNet(size, size).to(device)
        features = {
            name: _transform(frontend, part.tensors[0], size, device, config.eval_batch_size)
            for name, part in parts.items()
            if part is not None
        }
        return {**features, "meta": {"frontend": config.frontend}}

    if config.feature_cache:
        # Keyed by the images themselves too: data files replaced under the same settings get
        # features of their own, never another data set's.
        key = {**frontend_key(config), **data_fields(config), "images": _images_digest(parts)}
        features, _ = compute_once(cache_path(config, f"{config.frontend}-{digest(key)}"), compute)
    else:
        features = compute()
    train = features["train"]
    if any(len(features[n]) != len(p) for n, p in parts.items() if p is not None):
        raise TrainerError(  # only a damaged cache file can get here
            f"the cached {config.frontend} features do not match the data; delete "
            f"{config.feature_cache_dir or 'the feature cache'} and run again."
        )
    return with_inputs(splits, features, channels=train.shape[1], image_size=train.shape[2])


class NormalisedFeatures:
    """`prepare` for frontend features: to the device, then each example normalised by its
    own group statistics (GroupNorm with no learned scale; identity when groups is 0)."""

    def __init__(self, config: TrainConfig, channels: int, device: torch.device) -> None:
        self.groups = config.frontend_norm_groups  # checked to divide them: frontend_shape
        self.device = device

    def __call__(self, features: torch.Tensor) -> torch.Tensor:
        x = features.to(self.device, non_blocking=True)
        return F.group_norm(x, self.groups) if self.groups else x


@torch.no_grad()
def _transform(frontend, images, size, device, batch_size) -> torch.Tensor:
    out = []
    for start in range(0, len(images), batch_size):
        x = images[start : start + batch_size].to(device).float().div_(255)
        if x.shape[-1] != size or x.shape[-2] != size:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        out.append(frontend(x).cpu())
    return torch.cat(out)


def _images_digest(parts: dict) -> str:
    hasher = hashlib.sha256()
    for name, part in parts.items():
        if part is not None:
            hasher.update(name.encode())
            hasher.update(part.tensors[0].contiguous().numpy().tobytes())
    return hasher.hexdigest()


def _kymatio_version() -> str:
    from importlib.metadata import version

    return version("kymatio")
