"""Per-example conv weight gradients: three exact kernels, which one a layer uses, and the
padding and unfolding they share.

Where an example's conv gradient is cheaper to materialise than its ghost norm (few channels,
many positions: `per_example_is_cheaper`), each example's gradient g aᵀ is computed by one of
three kernels (`per_example_kernels`), exact alike but summing in different orders:

- `conv_per_example_unfolded`: a batched matmul on the unfolded input (one strided copy);
- `conv_per_example_grouped`: the conv's weight-gradient kernel, the batch folded into groups;
- `conv_per_example_swapped`: one forward conv, the batch and the input channels swapped (for
  ungrouped convs).

Which kernel: `choose_kernel`, a fixed rule on the layer's hyper-parameters and shapes. Kernels
round differently, so a choice by timing (as this engine once made: each kernel timed on its
first calls per input shape, the fastest kept) made two runs of one seed differ in the last
bits whenever two kernels were close in time (and a run's first steps differ from its later
ones, and a resumed run from an uninterrupted one). The rule depends on the layer and the
shapes of its input and output gradient only (rows included, which a seed fixes), never on the
clock or the machine's load, so a seed replays bit for bit on one machine and library stack.
It was calibrated on CPU timings (1 and 2 threads) of every per-example layer of the project's
CNNs, WRNs, NFNets and a ResNet at several batch sizes: its total was within 10 % of the
per-layer fastest kernel on most of them and within 40 % on all (always unfolding: up to 45 %
slower), on a busy 2-core machine whose timings were themselves noisy:

- one input channel (the first conv of a grey-scale CNN): swapped, one depthwise convolution
  over all examples, up to 2× faster than the others with one thread;
- a stride-1 k×k conv (k > 1) of 16-64 input channels per group, over ≥ 256 output positions
  and ≥ 2¹⁴ in the batch: grouped, which skips the unfold copy (k² × the input), up to 2.5×
  faster there;
- otherwise unfolded (1×1 convs unfold for free; few positions or rows, or many channels,
  favour the batched matmul; grouped is tens of times slower on 3-channel inputs).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from trainers.fast_clipping.algebra import mean_views

PER_EXAMPLE_BUDGET = 2**26
"""Most per-example gradient entries one layer may materialise (256 MB of float32)."""

Kernel = Callable[..., torch.Tensor]
"""(module, padded input a, output gradient g, padding, views) → (B, groups, p, d)."""


def per_example_is_cheaper(positions: int, out_features: int, in_features: int, rows: int):
    """Mixed clipping's choice (Bu et al. 2022), by multiply-adds: materialising g aᵀ costs
    p·d·P per example, the ghost norm P²·(p + d); CPUs favour the former's one big kernel
    (no unfolding), so it wins up to twice the ghost's count, within a memory budget."""
    direct = out_features * in_features * positions
    ghost = positions * positions * (out_features + in_features)
    return direct <= 2 * ghost and rows * out_features * in_features <= PER_EXAMPLE_BUDGET


def conv_per_example_unfolded(module, a, g, padding, views: int) -> torch.Tensor:
    """Each example's weight gradient (B, groups, p, d) of a conv layer, its views averaged:
    g aᵀ per example on the unfolded input."""
    rows, groups = a.shape[0], module.groups
    unfolded = unfold(a, module, padding)
    unfolded = unfolded.reshape(rows, groups, -1, unfolded.shape[-1])
    grads = g.flatten(2).reshape(rows, groups, -1, unfolded.shape[-1])
    return mean_views(torch.matmul(grads, unfolded.transpose(-1, -2)), views)


def conv_per_example_grouped(module, a, g, padding, views: int) -> torch.Tensor:
    """The same by the convolution's weight-gradient kernel, the batch folded into groups."""
    rows, in_channels = a.shape[0], a.shape[1]
    out_channels, groups = g.shape[1], module.groups
    grads = torch.nn.grad.conv2d_weight(
        a.reshape(1, rows * in_channels, *a.shape[2:]),
        (rows * out_channels, in_channels // groups, *module.kernel_size),
        g.reshape(1, rows * out_channels, *g.shape[2:]),
        stride=module.stride, padding=padding, dilation=module.dilation, groups=rows * groups,
    )  # fmt: skip
    return mean_views(grads.reshape(rows, groups, out_channels // groups, -1), views)


def conv_per_example_swapped(module, a, g, padding, views: int) -> torch.Tensor:
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
    return mean_views(grads.reshape(rows, 1, out_channels, in_channels * kh * kw), views)


def per_example_kernels(module: nn.Conv2d) -> tuple[Kernel, ...]:
    """The exact per-example gradient kernels that apply to this conv layer."""
    kernels = (conv_per_example_unfolded, conv_per_example_grouped)
    return kernels + (conv_per_example_swapped,) if module.groups == 1 else kernels


def choose_kernel(module: nn.Conv2d, input_shape, grad_shape) -> Kernel:
    """The kernel for this layer, its (padded) input's and its output gradient's shapes (B·K
    rows first): a fixed rule (see the module's docstring), never a timing, so a seed replays
    exactly."""
    groups = module.groups
    rows, channels = input_shape[0], input_shape[1] // groups
    kh, kw = module.kernel_size
    positions = grad_shape[2] * grad_shape[3]
    if groups == 1 and channels == 1:
        return conv_per_example_swapped
    patches = kh * kw > 1 and tuple(module.stride) == (1, 1)
    if patches and 16 <= channels <= 64 and positions >= 256 and rows * positions >= 2**14:
        return conv_per_example_grouped
    return conv_per_example_unfolded


def explicit_padding(module: nn.Conv2d, a: torch.Tensor, same: bool = False):
    """The input as the convolution sees it and the symmetric padding still to apply: timm's
    `*Same` convs (`same`) and nn.Conv2d's padding="same" pad (maybe asymmetrically) here."""
    if same:
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


def unfold(a: torch.Tensor, module: nn.Conv2d, padding) -> torch.Tensor:
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
