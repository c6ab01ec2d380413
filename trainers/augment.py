"""Augmentation multiplicity (De et al. 2022, arXiv 2204.13650, §3.1).

Each example of a batch is augmented K times (random crop with padding + horizontal flip, the
CIFAR recipe); the K per-view gradients are *averaged before clipping*, so the clipped update
still has one example's sensitivity and privacy is accounted exactly as without augmentation.
This module makes the views; the DP step averages their per-view gradients (trainers.loop).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

PADDING = 4
"""Pixels of reflection padding before the random crop (4 at CIFAR's 32 px)."""


def augment_views(
    images: torch.Tensor, views: int, generator: torch.Generator, *, padding: int = PADDING
) -> torch.Tensor:
    """`views` random crop+flip views of every image, example-major: row i·K + k is view k of
    image i. uint8 in, uint8 out (crops and flips move pixels, never change them).

    Randomness comes from `generator` only (checkpointed with the trial), on the CPU, so a
    resumed trial draws the same views and the same seed gives the same views on any device.
    """
    if views < 1:
        raise ValueError(f"views must be ≥ 1 (got {views})")
    n, _, height, width = images.shape
    repeated = images.repeat_interleave(views, dim=0)
    total = n * views
    padded = F.pad(repeated.float(), (padding,) * 4, mode="reflect")
    # One draw of (top, left, flip) per view, view after view from one stream: a logical
    # batch's views do not depend on how it is split into physical batches (a memory setting).
    draws = torch.randint(0, 2 * (2 * padding + 1) ** 2, (total,), generator=generator)
    top, left = draws // 2 % (2 * padding + 1), draws // 2 // (2 * padding + 1)
    flip = draws % 2 == 1
    rows = (top.view(-1, 1) + torch.arange(height).view(1, -1)).to(images.device)
    cols = (left.view(-1, 1) + torch.arange(width).view(1, -1)).to(images.device)
    cols = torch.where(flip.to(images.device).view(-1, 1), cols.flip(1), cols)
    index = torch.arange(total, device=images.device).view(-1, 1, 1)
    # padded: (N·K, C, H+2p, W+2p) → gather each view's rows and (possibly flipped) columns.
    cropped = padded.permute(0, 2, 3, 1)[index, rows.view(total, -1, 1), cols.view(total, 1, -1)]
    return cropped.permute(0, 3, 1, 2).round().to(images.dtype).contiguous()
