"""timm's VisionTransformer's own parameters: the class token, register tokens and position
embedding, which `_pos_embed` puts into the token sequence before `pos_drop`.

With G the gradient at `pos_drop`'s input, (B·K, T, D) for tokens [cls, reg…, patches…]:
each row's gradient is G[:, 0] for `cls_token`, G[:, 1 : 1+R] for `reg_token`, and for
`pos_embed` G itself (added after the prefix tokens are concatenated) or G's patch tokens
(`no_embed_class`: added before). An example's gradient is the mean over its views' rows, a
(T, D) tensor per parameter: as small as one example's activations, so materialised.

With `dynamic_img_size` at the grid the model was built for, the resampling is the identity;
at another (square) grid, `pos_embed`'s gradient is the adjoint of timm's resampling, a linear
map, applied to each example's G by autograd.
"""

from __future__ import annotations

import math

import torch
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from trainers.fast_clipping.algebra import mean_views, trains
from trainers.fast_clipping.registry import MaterialisedHandler


class VisionTransformerTokensHandler(MaterialisedHandler):
    """Registered for timm's VisionTransformer in `timm_layers`."""

    @classmethod
    def unsupported(cls, module: nn.Module) -> str | None:
        kind = type(module)
        if any(
            getattr(kind, name) is not getattr(VisionTransformer, name)
            for name in ("_pos_embed", "forward_features")
        ):  # a subclass that adds its own tokens (DeiT's distillation token, …)
            return f"{kind.__name__} (its own token embedding)"
        own = {name for name, p in module.named_parameters(recurse=False) if p.requires_grad}
        unknown = own - {"cls_token", "reg_token", "pos_embed"}
        if unknown:
            return f"{kind.__name__} (its parameters {', '.join(sorted(unknown))})"
        return None

    def capture_site(self) -> tuple[nn.Module, str]:
        return self.module.pos_drop, "input"

    def prepare(self, activations, backprops, views, output=None) -> list[torch.Tensor]:
        """Each trainable parameter's per-example gradients, (B, *its shape)."""
        module = self.module
        g = mean_views(backprops, views)
        samples, start = {}, 0
        for token in (module.cls_token, module.reg_token):
            if token is None:
                continue
            count = token.shape[1]
            if trains(token):
                samples[id(token)] = g[:, None, start : start + count]
            start += count
        if trains(module.pos_embed):
            pos = self._pos_embed_gradient(g[:, start:] if module.no_embed_class else g)
            samples[id(module.pos_embed)] = pos[:, None]
        return self.in_order(samples)

    def _pos_embed_gradient(self, g: torch.Tensor) -> torch.Tensor:
        module = self.module
        if g.shape[1:] == module.pos_embed.shape[1:]:
            return g
        if not module.dynamic_img_size:
            raise RuntimeError("ViT tokens do not match its position embedding")
        prefix = 0 if module.no_embed_class else module.num_prefix_tokens
        side = math.isqrt(g.shape[1] - prefix)
        if side * side != g.shape[1] - prefix:
            raise ValueError(
                "fast clipping of a dynamic-size ViT's position embedding needs a square patch "
                "grid or the size the model was built for; use clipping=opacus"
            )
        pos_embed = module.pos_embed.detach().requires_grad_(True)
        with torch.enable_grad():
            resampled = resample_abs_pos_embed(
                pos_embed, new_size=(side, side), old_size=module.patch_embed.grid_size,
                num_prefix_tokens=prefix,
            )  # fmt: skip
            (grads,) = torch.autograd.grad(
                resampled, pos_embed, g.unsqueeze(1).to(resampled.dtype), is_grads_batched=True
            )
        return grads.squeeze(1).to(g.dtype)
