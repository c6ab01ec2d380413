"""Weight-standardised convs (timm's StdConv2d, ScaledStdConv2d and their `*Same` variants,
registered by type in `timm_layers`): clipping in the parameterisation that is trained.

The effective weight Ŵ_o = γ_o (W_o − μ_o)/σ_o of each output channel is a data-independent
function of W, so the per-example gradient of W is Jᵀ G_i with G_i the gradient of Ŵ. We apply
that Jacobian exactly, per example, inside the norm: with x̂ the standardised weights, n =
fan-in, r = var/(var+eps),
‖Jᵀ G_o‖² = (γ_o/σ_o)² (‖G_o‖² − n·m1² − n(2 − r)·m2²), m1 = mean(G_o), m2 = mean(x̂_o ⊙ G_o)
(the batch-norm backward, squared), and the gain's gradient is scale·(x̂_o·G_o) (NFNets' gains,
ScaledStdConv2d). The clipped sum is Jᵀ(Σ c_i G_i), applied once. So clipping happens in W and
the gain, exactly as Opacus would, not in Ŵ.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from trainers.fast_clipping.algebra import merge_views, trains
from trainers.fast_clipping.conv import ConvHandler
from trainers.fast_clipping.linear import ProductState


def standardisation(module, scaled: bool):
    """x̂ (out, n), 1/σ (out, 1), r = var/(var + eps) (out,) and the effective gain γ (out, 1)
    of a weight-standardised conv, as timm's forward computes Ŵ = γ·x̂ (batch norm over each
    output channel's weights, biased variance, `eps` inside the root)."""
    flat = module.weight.detach().reshape(module.weight.shape[0], -1)
    centred = flat - flat.mean(1, keepdim=True)
    var = centred.pow(2).mean(1, keepdim=True)  # two-pass: stable, and faster than var()
    inv_std = torch.rsqrt(var + module.eps)
    if scaled:
        gamma = module.gain.detach().reshape(-1, 1) * module.scale
    else:
        gamma = torch.ones_like(inv_std)
    return centred * inv_std, inv_std, (var * inv_std.pow(2)).reshape(-1), gamma


class StdConvHandler(ConvHandler):
    """timm's StdConv2d: Ŵ = (W − μ)/σ per output channel."""

    scaled = False
    needs_output = True  # conv(a, Ŵ) + b: gives x̂·G without another conv

    @property
    def gain(self) -> torch.Tensor | None:
        return self.module.gain if self.scaled else None

    def weight_trains(self) -> bool:
        return self.module.weight.requires_grad or trains(self.gain)

    def weight_norms(self, state: ProductState) -> torch.Tensor:
        module, a, g = self.module, state.a, state.g
        out_channels = module.weight.shape[0]
        groups = module.groups
        normalised, inv_std, ratio, gamma = state.standardisation = standardisation(
            module, self.scaled
        )
        n = normalised.shape[1]  # fan-in of one output channel (its group's inputs × kernel)
        scale = getattr(module, "scale", 1.0)
        # Per example and output channel: ‖G_o‖², 1·G_o and x̂_o·G_o, G = g aᵀ (gradient of Ŵ).
        hat = normalised.reshape(groups if a is None else a.shape[1], -1, n)
        if state.per_example is not None:  # (B, groups, p, n)
            grads = state.per_example
            batch = grads.shape[0]
            sq = grads.pow(2).sum(3).reshape(batch, out_channels)
            ones_dot = grads.sum(3).reshape(batch, out_channels)
            hat_dot = (grads * hat.to(grads.dtype)).sum(3).reshape(batch, out_channels)
        else:  # ghost: few positions
            batch = g.shape[0]
            gram = torch.matmul(a.transpose(-1, -2), a)
            sq = (torch.matmul(g, gram) * g).sum(3).reshape(batch, out_channels)
            ones_dot = torch.einsum("bgol,bgl->bgo", g, a.sum(2)).reshape(batch, out_channels)
            outputs = self._standardised_outputs(state, hat, a)
            hat_dot = (outputs * g).sum(3).reshape(batch, out_channels)
        total = torch.zeros(batch, dtype=sq.dtype, device=sq.device)
        if module.weight.requires_grad:
            m1, m2 = ones_dot / n, hat_dot / n
            projected = sq - n * m1.pow(2) - n * (2 - ratio.reshape(1, -1)) * m2.pow(2)
            factor = (gamma * inv_std).reshape(1, -1)
            total = total + (factor.pow(2) * projected.clamp_min(0)).sum(1)
        if trains(self.gain):
            total = total + (scale * hat_dot).pow(2).sum(1)
        return total

    def _standardised_outputs(self, state: ProductState, hat, a) -> torch.Tensor:
        """conv(a, x̂) per position, (B, groups, p, P): the layer's own output without its
        bias and gain, or (a zero gain) recomputed from the unfolded input."""
        module, outputs = self.module, state.output
        state.output = None
        gamma = state.standardisation[3].reshape(-1) if self.scaled else None
        if outputs is None or (gamma is not None and bool((gamma.abs() < 1e-6).any())):
            return torch.matmul(hat.to(a.dtype), a)
        if module.bias is not None:
            outputs = outputs - module.bias.detach().view(1, -1, 1, 1)
        if gamma is not None:
            outputs = outputs / gamma.view(1, -1, 1, 1)
        outputs = outputs.flatten(2)
        if state.views > 1:
            outputs = merge_views(outputs, state.views)
        return outputs.reshape(a.shape[0], a.shape[1], -1, outputs.shape[-1])

    def weight_sums(self, summed: torch.Tensor, state: ProductState) -> Iterator:
        # Jᵀ of the (data-independent) standardisation, once, on the clipped sum S: the
        # batch-norm backward, (γ/σ)(S − mean S − x̂·mean(x̂ ⊙ S)); the gain's is scale·x̂·S.
        module = self.module
        normalised, inv_std, _, gamma = state.standardisation
        flat = summed.reshape(normalised.shape).to(normalised.dtype)
        hat_dot = (flat * normalised).sum(1, keepdim=True)
        if module.weight.requires_grad:
            n = normalised.shape[1]
            weight_grad = (gamma * inv_std) * (
                flat - flat.mean(1, keepdim=True) - normalised * hat_dot / n
            )
            yield module.weight, weight_grad.reshape(module.weight.shape)
        if trains(self.gain):
            yield self.gain, (module.scale * hat_dot).reshape(self.gain.shape)


class ScaledStdConvHandler(StdConvHandler):
    """timm's ScaledStdConv2d (NFNets): Ŵ = gain · scale · (W − μ)/σ, the gain trained."""

    scaled = True


class SameStdConvHandler(StdConvHandler):
    same_padding = True


class SameScaledStdConvHandler(ScaledStdConvHandler):
    same_padding = True
