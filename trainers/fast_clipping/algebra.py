"""Per-example algebra the handlers share: views, and the norm of g aᵀ per example."""

from __future__ import annotations

import torch


def plain_norms(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """‖g_i a_iᵀ‖² per example, summed over groups: `a` (B, groups, d, P), `g` (B, groups, p,
    P) over P positions. Bu et al.'s mixed rule: the ghost norm Σ_{l,l'} (a_l·a_l')(g_l·g_l')
    where the positions are few (2P² < p·d), else the per-example gradient itself."""
    positions, d, p = a.shape[3], a.shape[2], g.shape[2]
    if positions == 1:  # rank one per group
        return (a.pow(2).sum((2, 3)) * g.pow(2).sum((2, 3))).sum(1)
    if 2 * positions * positions < p * d:  # ghost norm: ⟨aᵀa, gᵀg⟩ over positions
        gram_a = torch.matmul(a.transpose(-1, -2), a)
        gram_g = torch.matmul(g.transpose(-1, -2), g)
        return (gram_a * gram_g).sum((1, 2, 3))
    return torch.matmul(g, a.transpose(-1, -2)).pow(2).sum((1, 2, 3))  # g aᵀ per example


def mean_views(x: torch.Tensor, views: int) -> torch.Tensor:
    """Rows (B·K, …) → (B, …): the mean over each example's K views (no copy for K = 1)."""
    return x if views == 1 else x.reshape(x.shape[0] // views, views, *x.shape[1:]).mean(1)


def merge_views(x: torch.Tensor, views: int) -> torch.Tensor:
    """(B·K, c, P) → (B, c, K·P): an example's views side by side."""
    rows, channels, positions = x.shape
    return (
        x.reshape(rows // views, views, channels, positions)
        .transpose(1, 2)
        .reshape(rows // views, channels, views * positions)
    )


def trains(param: torch.Tensor | None) -> bool:
    """Whether `param` exists and is trained."""
    return param is not None and param.requires_grad
