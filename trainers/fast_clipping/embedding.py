"""nn.Embedding: y_t = W[i_t] at each position t, so an example's weight gradient puts Σ g_t
into row i_t (g at `padding_idx` ignored, as autograd does), its views' positions together over
K. Its squared norm is the ghost norm Σ_{t,t'} [i_t = i_t'] g_t·g_t' (positions² per example,
never the vocabulary), and the clipped sum adds c_i g_t / K into row i_t for every row."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from trainers.fast_clipping.registry import LayerHandler, register_layer


@dataclass
class EmbeddingState:
    indices: torch.Tensor
    """(B·K, T) each row's token indices."""
    grads: torch.Tensor
    """(B·K, T, D) the output gradient at each position (zero at `padding_idx`)."""
    views: int


@register_layer(nn.Embedding)
class EmbeddingHandler(LayerHandler):
    @classmethod
    def unsupported(cls, module: nn.Module) -> str | None:
        if module.max_norm is not None:  # renormalises W in place in the forward
            return "Embedding with max_norm"
        if module.scale_grad_by_freq:  # scales by counts over the whole batch
            return "Embedding with scale_grad_by_freq"
        return None

    def prepare(self, activations, backprops, views, output=None) -> EmbeddingState:
        rows = activations.shape[0]
        indices = activations.reshape(rows, -1)
        grads = backprops.reshape(rows, indices.shape[1], -1)
        if self.module.padding_idx is not None:
            grads = grads * (indices != self.module.padding_idx).unsqueeze(-1).to(grads)
        return EmbeddingState(indices, grads, views)

    def squared_norms(self, state: EmbeddingState) -> torch.Tensor:
        views = state.views
        # An example's positions: its K views' positions side by side, each gradient over K.
        indices = state.indices.reshape(-1, views * state.indices.shape[1])
        grads = state.grads.reshape(indices.shape[0], indices.shape[1], -1) / views
        same = indices.unsqueeze(2) == indices.unsqueeze(1)
        return (torch.matmul(grads, grads.transpose(1, 2)) * same).sum((1, 2))

    def clipped_sums(self, state: EmbeddingState, factors: torch.Tensor) -> Iterator:
        rows = (factors / state.views).repeat_interleave(state.views).to(state.grads)
        weighted = state.grads * rows.view(-1, 1, 1)
        summed = torch.zeros_like(self.module.weight).index_add_(
            0, state.indices.flatten(), weighted.reshape(-1, weighted.shape[-1])
        )
        yield self.module.weight, summed
