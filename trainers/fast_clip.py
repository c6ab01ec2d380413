"""Fast per-example clipping: per-example gradient norms without per-example gradients.

DP-SGD needs each example's gradient norm, then the sum of the clipped gradients. Opacus
materialises every per-example gradient (B × the model's size); for layers it has no grad
sampler for (timm's weight-standardised convs) it falls back to functorch over whole blocks.
This engine instead, layer by layer (Bu et al., "Differentially private optimization on large
model at small cost", ICML 2023 — book-keeping; mixed ghost norms, NeurIPS 2022):

1. one forward pass keeps each supported layer's input `a`, one backward pass of the summed
   per-example losses gives each layer's output gradient `g` (no weight requires grad, so
   autograd computes no weight gradient, and the pass starts at the first trainable layer);
2. each example's squared gradient norm per layer, from `a` and `g`: the ghost norm
   Σ_{l,l'} (a_l·a_l')(g_l·g_l') where the output positions L are few (2L² < p·d), else the
   per-example gradient g aᵀ of that layer alone (Bu et al.'s mixed rule);
3. the clip factors c_i = min(1, C/‖∇_i‖), and the clipped sum Σ_i c_i g_i a_iᵀ per layer by
   the layer's own weight-gradient kernel on the c-weighted output gradients — no second
   backward pass through the network.

Weight-standardised convs (timm's StdConv2d, ScaledStdConv2d): the effective weight
Ŵ_o = γ_o (W_o − μ_o)/σ_o of each output channel is a data-independent function of W, so the
per-example gradient of W is Jᵀ G_i with G_i the gradient of Ŵ. We apply that Jacobian exactly,
per example, inside the norm: with x̂ the standardised weights, n = fan-in, r = var/(var+eps),
‖Jᵀ G_o‖² = (γ_o/σ_o)² (‖G_o‖² − n·m1² − n(2 − r)·m2²), m1 = mean(G_o), m2 = mean(x̂_o ⊙ G_o)
(the batch-norm backward, squared), and the gain's gradient is scale·(x̂_o·G_o). The clipped
sum is Jᵀ(Σ c_i G_i), one autograd call through the standardisation. So clipping happens in
the parameterisation that is trained (W), exactly as Opacus would, not in Ŵ.

Augmentation multiplicity: an example's K views are one example whose output positions are
the K views' positions together (its gradient is the mean over views).

Supported: nn.Linear, nn.Conv2d (grouped too; timm's `*Same` padding too), StdConv2d,
ScaledStdConv2d, nn.GroupNorm, and NFNets' skip-init gains (trainers.models.ScalarGain). A
model with any other trainable parameter uses Opacus instead,
said in one log line (`fast_clipping_unsupported` gives the reason).
"""

from __future__ import annotations

import logging
import time

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)


def _from_timm(module: nn.Module) -> bool:
    """Whether `module`'s class is, or derives from, one of timm's. Asking this first spares
    models without timm layers (the CNNs) the import of timm: 3-4 s in every trial process."""
    return any(cls.__module__.startswith("timm.") for cls in type(module).__mro__)


def _std_conv_kind(module: nn.Module) -> str | None:
    """'std' or 'scaled' for timm's weight-standardised convs, else None."""
    if not _from_timm(module):
        return None
    from timm.layers import ScaledStdConv2d, ScaledStdConv2dSame, StdConv2d, StdConv2dSame

    if isinstance(module, (ScaledStdConv2d, ScaledStdConv2dSame)):
        return "scaled"
    if isinstance(module, (StdConv2d, StdConv2dSame)):
        return "std"
    return None


def _is_same_padding(module: nn.Module) -> bool:
    if not _from_timm(module):
        return False
    from timm.layers import Conv2dSame, ScaledStdConv2dSame, StdConv2dSame

    return isinstance(module, (Conv2dSame, ScaledStdConv2dSame, StdConv2dSame))


def _supported(module: nn.Module) -> str | None:
    """None if the engine handles `module`'s own parameters, else why not."""
    if type(module) is nn.Linear:
        return None
    if isinstance(module, nn.Conv2d):
        if module.padding_mode != "zeros":
            return f"{type(module).__name__} with padding_mode={module.padding_mode}"
        kind = _std_conv_kind(module)
        if kind is None and type(module) not in (nn.Conv2d,) and not _is_same_padding(module):
            return type(module).__name__
        return None
    if type(module) is nn.GroupNorm:
        return None
    if type(module).__name__ == "ScalarGain":
        return None
    return type(module).__name__


def fast_clipping_unsupported(model: nn.Module) -> str | None:
    """Why the engine cannot clip this model (None: it can)."""
    reasons = set()
    for module in model.modules():
        if any(p.requires_grad for p in module.parameters(recurse=False)):
            reason = _supported(module)
            if reason is not None:
                reasons.add(reason)
    return ", ".join(sorted(reasons)) if reasons else None


class _Layer:
    """One supported layer: its hooks' captures and its per-example computations."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        if isinstance(module, nn.Linear):
            self.kind = "linear"
        elif isinstance(module, nn.GroupNorm):
            self.kind = "groupnorm"
        elif isinstance(module, nn.Conv2d):
            self.kind = "conv"
        else:
            self.kind = "scale"  # trainers.models.ScalarGain
        self.std = _std_conv_kind(module) if self.kind == "conv" else None
        self.activations: torch.Tensor | None = None
        self.backprops: torch.Tensor | None = None
        self.outputs: torch.Tensor | None = None
        self.method: dict = {}  # per-example kernel chosen per input shape
        self.handles = [module.register_forward_hook(self._forward)]

    def _forward(self, module, inputs, output):
        if not (torch.is_grad_enabled() and module.training and FastClipper.capturing):
            return None
        self.activations = inputs[0].detach()
        if self.std is not None:
            self.outputs = output.detach()  # conv(a, Ŵ) + b: gives x̂·G without another conv
        if not output.requires_grad:
            # Nothing before this layer needs a gradient (the first layer, or a frozen
            # backbone): start the backward pass here instead of at the input.
            output = output.detach().requires_grad_(True)
            output.register_hook(self._backward)
            return output
        output.register_hook(self._backward)
        return None

    def _backward(self, grad: torch.Tensor) -> None:
        self.backprops = grad.detach()

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()

    # --- per-layer algebra -------------------------------------------------------------------

    def prepare(self, views: int) -> None:
        """Per example (K views merged): `a` (B, d, P) and `g` (B, p, P), P positions."""
        a, g = self.activations, self.backprops
        self.activations = self.backprops = None
        module = self.module
        # `raw`: for the clipped sum, by the layer's own weight-gradient kernel.
        if self.kind == "conv":
            a, self.padding = _explicit_padding(module, a)
            self.raw = (a, g)
            self.views = views
            groups = module.groups
            positions = views * g.shape[2] * g.shape[3]
            fan_in = a.shape[1] // groups * module.kernel_size[0] * module.kernel_size[1]
            if _per_example_is_cheaper(positions, g.shape[1] // groups, fan_in,
                                       rows=a.shape[0] // views * groups):  # fmt: skip
                # Few channels, many positions: each example's gradient (B, groups, p, d).
                self.per_example = self._per_example(a, g, views)
                self.bias_sample = _mean_views(g.flatten(2).sum(2), views)
                self.a = self.g = None
                return
            a = _unfold(a, module, self.padding)
            g = g.flatten(2)
        elif self.kind == "linear":
            self.raw = (a, g)
            a = a.reshape(a.shape[0], -1, a.shape[-1]).transpose(1, 2)
            g = g.reshape(g.shape[0], -1, g.shape[-1]).transpose(1, 2)
        self.views = views
        if self.kind == "scale":  # y = γ·x: the per-example gradient is Σ g ⊙ x
            sample = (g * a).flatten(1).sum(1)
            self.sample = sample.reshape(-1, views).mean(1)
            return
        self.per_example = None
        if views > 1 and self.kind != "groupnorm":
            # An example's views are its positions; its gradient is their mean.
            a = _merge_views(a, views)
            g = _merge_views(g, views) / views
        if self.kind != "groupnorm":
            # Grouped convs: group j maps its own input channels to its own output channels.
            groups = getattr(module, "groups", 1)
            a = a.reshape(a.shape[0], groups, -1, a.shape[-1])
            g = g.reshape(g.shape[0], groups, -1, g.shape[-1])
        self.a, self.g = a, g

    def _per_example(self, a, g, views) -> torch.Tensor:
        """Per-example conv gradients by the fastest exact kernel for this layer and batch
        shape, measured on first use (which wins depends on shapes and hardware)."""
        key = (a.shape, views)
        choice = self.method.setdefault(key, {})
        if isinstance(choice, dict):  # still measuring: each kernel's best of TRIALS calls
            candidates = per_example_kernels(self.module)
            pending = [c for c in candidates if len(choice.get(c, [])) < KERNEL_TRIALS]
            if not pending:
                choice = self.method[key] = min(candidates, key=lambda c: min(choice[c]))
            else:
                started = time.perf_counter()
                result = pending[0](self.module, a, g, self.padding, views)
                choice.setdefault(pending[0], []).append(time.perf_counter() - started)
                return result
        return choice(self.module, a, g, self.padding, views)

    def squared_norms(self) -> torch.Tensor:
        """Each example's squared gradient norm over this layer's trainable parameters."""
        module = self.module
        if self.kind == "scale":
            return self.sample.pow(2)
        if self.kind == "groupnorm":
            # Per view (each normalised on its own), then the mean over an example's views.
            normalised = _group_normalised(self.a, module)
            merge = lambda x: x.reshape(-1, self.views, x.shape[1]).mean(1)  # noqa: E731
            total = 0.0
            if module.weight is not None and module.weight.requires_grad:
                self.weight_sample = merge((self.g * normalised).flatten(2).sum(2))
                total = total + self.weight_sample.pow(2).sum(1)
            if module.bias is not None and module.bias.requires_grad:
                self.bias_sample = merge(self.g.flatten(2).sum(2))
                total = total + self.bias_sample.pow(2).sum(1)
            return total
        a, g = self.a, self.g  # (B, groups, d, P), (B, groups, p, P), or per_example
        bias = getattr(module, "bias", None)
        if self.per_example is not None:
            total = torch.zeros(self.per_example.shape[0], dtype=self.per_example.dtype,
                                device=self.per_example.device)  # fmt: skip
            if bias is not None and bias.requires_grad:
                total = total + self.bias_sample.pow(2).sum(1)
        else:
            total = torch.zeros(g.shape[0], dtype=g.dtype, device=g.device)
            if bias is not None and bias.requires_grad:
                total = total + g.sum(3).pow(2).sum((1, 2))
        weight_trains = module.weight.requires_grad
        gain = getattr(module, "gain", None) if self.std == "scaled" else None
        gain_trains = gain is not None and gain.requires_grad
        if not (weight_trains or gain_trains):
            return total
        if self.std is None:
            if self.per_example is not None:  # a fused norm: one pass, no squared copy
                return total + torch.linalg.vector_norm(self.per_example.flatten(1), dim=1) ** 2
            return total + self._plain_norms(a, g)
        return total + self._standardised_norms(a, g, weight_trains, gain_trains)

    def _plain_norms(self, a, g) -> torch.Tensor:
        positions, d, p = a.shape[3], a.shape[2], g.shape[2]
        if positions == 1:  # rank one per group
            return (a.pow(2).sum((2, 3)) * g.pow(2).sum((2, 3))).sum(1)
        if 2 * positions * positions < p * d:  # ghost norm: ⟨aᵀa, gᵀg⟩ over positions
            gram_a = torch.matmul(a.transpose(-1, -2), a)
            gram_g = torch.matmul(g.transpose(-1, -2), g)
            return (gram_a * gram_g).sum((1, 2, 3))
        return torch.matmul(g, a.transpose(-1, -2)).pow(2).sum((1, 2, 3))  # g aᵀ per example

    def _standardised_norms(self, a, g, weight_trains, gain_trains) -> torch.Tensor:
        module = self.module
        out_channels = module.weight.shape[0]
        groups = module.groups
        normalised, inv_std, ratio, gamma = self.standardisation = _standardisation(module)
        n = normalised.shape[1]  # fan-in of one output channel (its group's inputs × kernel)
        scale = getattr(module, "scale", 1.0)
        # Per example and output channel: ‖G_o‖², 1·G_o and x̂_o·G_o, G = g aᵀ (gradient of Ŵ).
        hat = normalised.reshape(groups if a is None else a.shape[1], -1, n)
        if self.per_example is not None:  # (B, groups, p, n)
            grads = self.per_example
            batch = grads.shape[0]
            sq = grads.pow(2).sum(3).reshape(batch, out_channels)
            ones_dot = grads.sum(3).reshape(batch, out_channels)
            hat_dot = (grads * hat.to(grads.dtype)).sum(3).reshape(batch, out_channels)
        else:  # ghost: few positions
            batch = g.shape[0]
            gram = torch.matmul(a.transpose(-1, -2), a)
            sq = (torch.matmul(g, gram) * g).sum(3).reshape(batch, out_channels)
            ones_dot = torch.einsum("bgol,bgl->bgo", g, a.sum(2)).reshape(batch, out_channels)
            hat_dot = (self._standardised_outputs(hat, a) * g).sum(3).reshape(batch, out_channels)
        total = torch.zeros(batch, dtype=sq.dtype, device=sq.device)
        if weight_trains:
            m1, m2 = ones_dot / n, hat_dot / n
            projected = sq - n * m1.pow(2) - n * (2 - ratio.reshape(1, -1)) * m2.pow(2)
            factor = (gamma * inv_std).reshape(1, -1)
            total = total + (factor.pow(2) * projected.clamp_min(0)).sum(1)
        if gain_trains:
            total = total + (scale * hat_dot).pow(2).sum(1)
        return total

    def _standardised_outputs(self, hat, a) -> torch.Tensor:
        """conv(a, x̂) per position, (B, groups, p, P): the layer's own output without its
        bias and gain, or (a zero gain) recomputed from the unfolded input."""
        module, outputs = self.module, self.outputs
        self.outputs = None
        gamma = self.standardisation[3].reshape(-1) if self.std == "scaled" else None
        if outputs is None or (gamma is not None and bool((gamma.abs() < 1e-6).any())):
            return torch.matmul(hat.to(a.dtype), a)
        if module.bias is not None:
            outputs = outputs - module.bias.detach().view(1, -1, 1, 1)
        if gamma is not None:
            outputs = outputs / gamma.view(1, -1, 1, 1)
        outputs = outputs.flatten(2)
        if self.views > 1:
            outputs = _merge_views(outputs, self.views)
        return outputs.reshape(a.shape[0], a.shape[1], -1, outputs.shape[-1])

    def accumulate_clipped(self, factors: torch.Tensor, sums: dict) -> None:
        """Add Σ_i c_i ∇_i of this layer's trainable parameters into `sums`."""
        module = self.module
        if self.kind == "scale":
            _add(sums, module.gain, (factors * self.sample).sum().reshape(module.gain.shape))
            return
        if self.kind == "groupnorm":
            if module.weight is not None and module.weight.requires_grad:
                _add(sums, module.weight, (factors[:, None] * self.weight_sample).sum(0))
            if module.bias is not None and module.bias.requires_grad:
                _add(sums, module.bias, (factors[:, None] * self.bias_sample).sum(0))
            return
        bias = getattr(module, "bias", None)
        bias_trains = bias is not None and bias.requires_grad
        gain = getattr(module, "gain", None) if self.std == "scaled" else None
        trains = [p for p in (module.weight, gain) if p is not None and p.requires_grad]
        if self.per_example is not None:  # materialised already: the clipped sums are cheap
            factors = factors.to(self.per_example.dtype)
            if bias_trains:
                _add(sums, bias, factors @ self.bias_sample)
            if not trains:
                return
            summed = (factors @ self.per_example.flatten(1)).reshape(module.weight.shape)
        else:
            # Rows are views: each carries its example's factor, over K (its gradient is the
            # mean), on the output gradients; then the layer's own weight-gradient kernel.
            a, g = self.raw
            rows = (factors / self.views).repeat_interleave(self.views)
            weighted = g * rows.view(-1, *([1] * (g.dim() - 1)))
            if bias_trains:
                if self.kind == "conv":
                    bias_sum = weighted.reshape(weighted.shape[0], weighted.shape[1], -1)
                    bias_sum = bias_sum.sum((0, 2))
                else:
                    bias_sum = weighted.reshape(-1, weighted.shape[-1]).sum(0)
                _add(sums, bias, bias_sum)
            if not trains:
                return
            if self.kind == "conv":
                summed = torch.nn.grad.conv2d_weight(
                    a, module.weight.shape, weighted, stride=module.stride,
                    padding=self.padding, dilation=module.dilation, groups=module.groups,
                )  # fmt: skip
            else:
                summed = weighted.reshape(-1, weighted.shape[-1]).T @ a.reshape(-1, a.shape[-1])
        if self.std is None:
            _add(sums, module.weight, summed)
            return
        # Jᵀ of the (data-independent) standardisation, once, on the clipped sum S: the
        # batch-norm backward, (γ/σ)(S − mean S − x̂·mean(x̂ ⊙ S)); the gain's is scale·x̂·S.
        normalised, inv_std, _, gamma = self.standardisation
        flat = summed.reshape(normalised.shape).to(normalised.dtype)
        hat_dot = (flat * normalised).sum(1, keepdim=True)
        if module.weight.requires_grad:
            n = normalised.shape[1]
            weight_grad = (gamma * inv_std) * (
                flat - flat.mean(1, keepdim=True) - normalised * hat_dot / n
            )
            _add(sums, module.weight, weight_grad.reshape(module.weight.shape))
        if gain is not None and gain.requires_grad:
            _add(sums, gain, (module.scale * hat_dot).reshape(gain.shape))


PER_EXAMPLE_BUDGET = 2**26
"""Most per-example gradient entries one layer may materialise (256 MB of float32)."""


def _per_example_is_cheaper(positions: int, out_features: int, in_features: int, rows: int):
    """Mixed clipping's choice (Bu et al. 2022), by multiply-adds: materialising g aᵀ costs
    p·d·P per example, the ghost norm P²·(p + d); CPUs favour the former's one big kernel
    (no unfolding), so it wins up to twice the ghost's count, within a memory budget."""
    direct = out_features * in_features * positions
    ghost = positions * positions * (out_features + in_features)
    return direct <= 2 * ghost and rows * out_features * in_features <= PER_EXAMPLE_BUDGET


KERNEL_TRIALS = 2
"""Calls of each per-example kernel timed before a layer settles on the faster (the first
call of a kernel also pays for its setup)."""


def _conv_per_example_unfolded(module, a, g, padding, views: int) -> torch.Tensor:
    """Each example's weight gradient (B, groups, p, d) of a conv layer, its views averaged:
    g aᵀ per example on the unfolded input."""
    rows, groups = a.shape[0], module.groups
    unfolded = _unfold(a, module, padding)
    unfolded = unfolded.reshape(rows, groups, -1, unfolded.shape[-1])
    grads = g.flatten(2).reshape(rows, groups, -1, unfolded.shape[-1])
    return _mean_views(torch.matmul(grads, unfolded.transpose(-1, -2)), views)


def _conv_per_example_grouped(module, a, g, padding, views: int) -> torch.Tensor:
    """The same by the convolution's weight-gradient kernel, the batch folded into groups."""
    rows, in_channels = a.shape[0], a.shape[1]
    out_channels, groups = g.shape[1], module.groups
    grads = torch.nn.grad.conv2d_weight(
        a.reshape(1, rows * in_channels, *a.shape[2:]),
        (rows * out_channels, in_channels // groups, *module.kernel_size),
        g.reshape(1, rows * out_channels, *g.shape[2:]),
        stride=module.stride, padding=padding, dilation=module.dilation, groups=rows * groups,
    )  # fmt: skip
    return _mean_views(grads.reshape(rows, groups, out_channels // groups, -1), views)


def _conv_per_example_swapped(module, a, g, padding, views: int) -> torch.Tensor:
    """The same as one forward convolution with the roles swapped (ungrouped layers):
    ∇W[b,o,c,k] = Σ_l g[b,o,l] a[b,c,s·l + d·k] correlates input channel c (now the batch)
    with each example's output gradient (now a depthwise kernel, dilated by the stride)."""
    rows, in_channels = a.shape[0], a.shape[1]
    out_channels = g.shape[1]
    kh, kw = module.kernel_size
    a = F.pad(a, (padding[1], padding[1], padding[0], padding[0])) if any(padding) else a
    # Positions past the kernel's extent (when the stride does not divide) are not weights.
    correlated = F.conv2d(
        a.transpose(0, 1),
        g.reshape(rows * out_channels, 1, *g.shape[2:]),
        stride=module.dilation,
        dilation=module.stride,
        groups=rows,
    )[:, :, :kh, :kw]
    grads = correlated.reshape(in_channels, rows, out_channels, kh * kw).permute(1, 2, 0, 3)
    return _mean_views(grads.reshape(rows, 1, out_channels, in_channels * kh * kw), views)


def per_example_kernels(module: nn.Conv2d) -> tuple:
    """The exact per-example gradient kernels that apply to this conv layer."""
    kernels = (_conv_per_example_unfolded, _conv_per_example_grouped)
    return kernels + (_conv_per_example_swapped,) if module.groups == 1 else kernels


def _explicit_padding(module: nn.Conv2d, a: torch.Tensor):
    """The input as the convolution sees it and the symmetric padding still to apply: timm's
    `*Same` convs and nn.Conv2d's padding="same" pad (maybe asymmetrically) here."""
    if _is_same_padding(module):
        from timm.layers import pad_same

        return pad_same(a, module.kernel_size, module.stride, module.dilation), (0, 0)
    if module.padding == "valid":
        return a, (0, 0)
    if module.padding == "same":  # stride 1 (PyTorch's rule): the extra pixel goes last
        pads = []
        for k, d in zip(reversed(module.kernel_size), reversed(module.dilation), strict=True):
            total = d * (k - 1)
            pads += [total // 2, total - total // 2]
        return F.pad(a, pads), (0, 0)
    return a, tuple(module.padding)


def _unfold(a: torch.Tensor, module: nn.Conv2d, padding) -> torch.Tensor:
    """F.unfold's (B, C·kh·kw, L), by a strided view and one copy (several times faster
    than im2col on CPU)."""
    if any(padding):
        a = F.pad(a, (padding[1], padding[1], padding[0], padding[0]))
    (kh, kw), (sh, sw), (dh, dw) = module.kernel_size, module.stride, module.dilation
    rows, channels, height, width = a.shape
    out_h = (height - dh * (kh - 1) - 1) // sh + 1
    out_w = (width - dw * (kw - 1) - 1) // sw + 1
    s = a.stride()
    view = a.as_strided(
        (rows, channels, kh, kw, out_h, out_w),
        (s[0], s[1], dh * s[2], dw * s[3], sh * s[2], sw * s[3]),
        a.storage_offset(),
    )  # fmt: skip
    return view.reshape(rows, channels * kh * kw, out_h * out_w)


def _mean_views(x: torch.Tensor, views: int) -> torch.Tensor:
    """Rows (B·K, …) → (B, …): the mean over each example's K views (no copy for K = 1)."""
    return x if views == 1 else x.reshape(x.shape[0] // views, views, *x.shape[1:]).mean(1)


def _standardisation(module):
    """x̂ (out, n), 1/σ (out, 1), r = var/(var + eps) (out,) and the effective gain γ (out, 1)
    of a weight-standardised conv, as timm's forward computes Ŵ = γ·x̂ (batch norm over each
    output channel's weights, biased variance, `eps` inside the root)."""
    flat = module.weight.detach().reshape(module.weight.shape[0], -1)
    centred = flat - flat.mean(1, keepdim=True)
    var = centred.pow(2).mean(1, keepdim=True)  # two-pass: stable, and faster than var()
    inv_std = torch.rsqrt(var + module.eps)
    if _std_conv_kind(module) == "scaled":
        gamma = module.gain.detach().reshape(-1, 1) * module.scale
    else:
        gamma = torch.ones_like(inv_std)
    return centred * inv_std, inv_std, (var * inv_std.pow(2)).reshape(-1), gamma


def _group_normalised(a: torch.Tensor, module: nn.GroupNorm) -> torch.Tensor:
    return F.group_norm(a, module.num_groups, None, None, module.eps)


def _merge_views(x: torch.Tensor, views: int) -> torch.Tensor:
    """(B·K, c, P) → (B, c, K·P): an example's views side by side."""
    rows, channels, positions = x.shape
    return (
        x.reshape(rows // views, views, channels, positions)
        .transpose(1, 2)
        .reshape(rows // views, channels, views * positions)
    )


def _add(sums: dict, param: torch.Tensor, value: torch.Tensor) -> None:
    key = id(param)
    sums[key] = value if key not in sums else sums[key] + value


class FastClipper:
    """Clips one physical batch at a time and accumulates the clipped sums of a logical one."""

    capturing = False
    """Set by `forward_with_input_grad`: only its forward passes are captured."""

    def __init__(self, model: nn.Module, max_grad_norm: float) -> None:
        self.model = model
        self.max_grad_norm = max_grad_norm
        self.layers = [
            _Layer(m)
            for m in model.modules()
            if any(p.requires_grad for p in m.parameters(recurse=False))
        ]
        self.sums: dict[int, torch.Tensor] = {}
        self.last_norms: torch.Tensor | None = None

    def backward(self, loss_per_row: torch.Tensor, views: int) -> None:
        """Per-example norms, clip factors and clipped sums of this physical batch."""
        loss_per_row.sum().backward()
        if loss_per_row.numel() == 0:
            return
        for layer in self.layers:
            layer.prepare(views)
        squared = sum(layer.squared_norms() for layer in self.layers)
        norms = squared.clamp_min(0).sqrt()
        self.last_norms = norms.detach()
        factors = (self.max_grad_norm / (norms + 1e-6)).clamp(max=1.0)
        for layer in self.layers:
            layer.accumulate_clipped(factors, self.sums)
            layer.a = layer.g = layer.sample = layer.raw = layer.per_example = None

    def take_sums(self) -> dict[int, torch.Tensor]:
        sums, self.sums = self.sums, {}
        return sums

    def close(self) -> None:
        for layer in self.layers:
            layer.remove()


def forward_with_input_grad(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Forward with no weight requiring grad: the backward pass then computes the layer output
    gradients the engine needs (from the first trainable layer on) and no weight gradient."""
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    FastClipper.capturing = True
    try:
        return model(images.detach())
    finally:
        FastClipper.capturing = False
        for p in params:
            p.requires_grad_(True)


def noise_and_average(
    params: list[torch.Tensor],
    sums: dict[int, torch.Tensor],
    *,
    noise_multiplier: float,
    max_grad_norm: float,
    expected_batch_size: float,
    generator: torch.Generator,
    buffers: dict | None = None,
) -> None:
    """p.grad = (Σ clipped + N(0, σ²C²)) / expected batch size, as Opacus does for a mean loss.

    `buffers` (id(param) → tensor), kept by the caller across steps, holds the noise draws.
    """
    for param in params:
        # The draws Opacus's optimizer makes (same generator, same parameter order), into a
        # buffer kept across steps: a fresh 68 M-float tensor per step costs page faults.
        noise = buffers.get(id(param)) if buffers is not None else None
        if noise is None or noise.shape != param.shape:
            noise = torch.empty_like(param)
            if buffers is not None:
                buffers[id(param)] = noise
        noise.normal_(0, noise_multiplier * max_grad_norm, generator=generator)
        summed = sums.get(id(param))
        grad = noise.clone() if summed is None else summed.to(param.dtype).add_(noise)
        param.grad = grad.div_(expected_batch_size)
