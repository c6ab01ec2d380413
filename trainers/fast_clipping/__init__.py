"""Fast per-example clipping: per-example gradient norms without per-example gradients.

DP-SGD needs each example's gradient norm, then the sum of the clipped gradients. Opacus
materialises every per-example gradient (B × the model's size); for layers it has no grad
sampler for (timm's weight-standardised convs) it falls back to functorch over whole blocks.
This engine instead, layer by layer (Bu et al., "Differentially private optimization on large
model at small cost", ICML 2023 — book-keeping; mixed ghost norms, NeurIPS 2022):

1. one forward pass keeps each supported layer's input `a`, one backward pass of the summed
   per-example losses gives each layer's output gradient `g` (no weight requires grad, so
   autograd computes no weight gradient, and the pass starts at the first trainable layer);
2. each example's squared gradient norm per layer, from `a` and `g` (by the layer's handler:
   the ghost norm where the output positions are few, else the per-example gradient);
3. the clip factors c_i = min(1, C/‖∇_i‖), and the clipped sum Σ_i c_i ∇_i per layer by the
   layer's own weight-gradient kernel on the c-weighted output gradients — no second backward
   pass through the network.

Augmentation multiplicity: an example's K views are one example whose output positions are
the K views' positions together (its gradient is the mean over views).

Layers, one handler each, registered by type (`register_layer`, lookup by MRO): nn.Linear
(`linear`), nn.Conv2d and timm's Conv2dSame (`conv`, kernels in `conv_kernels`), timm's
StdConv2d and ScaledStdConv2d with their `*Same` variants (`standardisation`, bound to timm's
types in `timm_layers`), nn.GroupNorm and timm's GroupNormAct (`norm`), nn.LayerNorm,
nn.RMSNorm and timm's LayerNorm, LayerNorm2d, RmsNorm, LayerScale and LayerScale2d over any
leading (token) dimensions (`layer_norm`), timm's VisionTransformer's class and register tokens
and position embedding (`vit_tokens`), nn.Embedding (`embedding`), NFNets' skip-init gains
(trainers.models.ScalarGain, `gain`). Linear layers on tokens (attention, MLP) use Bu et
al.'s rule per layer: the ghost norm where 2T² < p·d (every layer of ViT-B/16 at 224 px), else
the per-example gradient.
The trainer uses Opacus for a model with any other trainable layer, said in one log line
(`fast_clipping_unsupported` gives the reason).

Public surface: `FastClipper`, `forward_with_input_grad` and `noise_and_average` (the engine,
`engine`), `make_private` (a context-managed DP-SGD step on your own model and optimizer,
`private`), `register_layer` and `LayerHandler` (new layer types), `fast_clipping_unsupported`.
"""

from trainers.fast_clipping import conv, embedding, gain, layer_norm, linear, norm  # noqa: F401
from trainers.fast_clipping.engine import (
    FastClipper,
    SharedLayerError,
    forward_with_input_grad,
    layer_run_twice,
    noise_and_average,
)
from trainers.fast_clipping.private import PrivateTraining, make_private
from trainers.fast_clipping.registry import (
    LayerHandler,
    fast_clipping_unsupported,
    register_layer,
)

__all__ = [
    "FastClipper",
    "LayerHandler",
    "PrivateTraining",
    "SharedLayerError",
    "fast_clipping_unsupported",
    "forward_with_input_grad",
    "layer_run_twice",
    "make_private",
    "noise_and_average",
    "register_layer",
]
