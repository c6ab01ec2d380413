"""Layer selection (Cattan et al. 2022, arXiv 2206.02617): which parameters a trial trains.

Training fewer parameters under DP adds noise to fewer coordinates. Frozen parameters get no
gradient, so Opacus neither computes their per-example gradients nor clips or noises them: the
privacy guarantee is about the trainable ones, exactly as accounted.

- `all`: everything.
- `head`: the classifier only (linear probing); the rest runs in eval mode, frozen.
- `last_k_blocks`: the last `trainable_blocks` blocks and everything after them (final conv,
  norm, head).
- `norms_and_head`: normalisation parameters (GroupNorm/LayerNorm/BatchNorm affine, and the
  `gain` scales of NFNets' weight-standardised convs, which stand in for them) and the head.
- `bias_and_head`: BitFit (Ben Zaken et al. 2022): every bias and the head.

The head is re-initialised to zero by default whenever not everything trains (`head_init`):
a zero head starts every class at equal logits, a known good start for DP fine-tuning
(De et al. 2022; Mehta et al. 2023).
"""

from __future__ import annotations

import logging

from torch import nn

from trainers.config import TRAINABLE_LAYERS, TrainConfig, TrainerError

log = logging.getLogger(__name__)

__all__ = ["TRAINABLE_LAYERS", "blocks", "head_module", "select_trainable", "set_frozen_modes"]
_NORMS = (nn.GroupNorm, nn.LayerNorm, nn.modules.batchnorm._BatchNorm)


def head_module(model: nn.Module) -> nn.Linear | nn.Conv2d:
    """The final classifier layer: timm's `get_classifier()` (a Linear, or the 1×1 Conv2d of
    BiT's ResNetV2), else the last `nn.Linear`."""
    getter = getattr(model, "get_classifier", None)
    if callable(getter):
        head = getter()
        if isinstance(head, (nn.Linear, nn.Conv2d)):
            return head
        linears = [m for m in head.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
        if linears:
            return linears[-1]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise TrainerError(
            f"{type(model).__name__} has no linear classifier to train; use trainable_layers=all."
        )
    return linears[-1]


def blocks(model: nn.Module) -> list[nn.Module]:
    """The model's blocks in order: timm's stages/blocks/layers (stages split into their
    blocks), else every child layer with parameters except the head."""
    for name in ("stages", "blocks", "layers"):
        container = getattr(model, name, None)
        if isinstance(container, (nn.Sequential, nn.ModuleList)) and len(container):
            found: list[nn.Module] = []
            for stage in container:
                inner = getattr(stage, "blocks", None)
                if isinstance(inner, (nn.Sequential, nn.ModuleList)) and len(inner):
                    found.extend(inner)
                elif isinstance(stage, nn.Sequential) and name == "stages":
                    found.extend(stage)
                else:
                    found.append(stage)
            return found
    head = head_module(model)
    leaves = [
        m
        for m in model.modules()
        if m is not head and not list(m.children()) and any(True for _ in m.parameters())
    ]
    return leaves


def select_trainable(model: nn.Module, config: TrainConfig) -> dict[str, int]:
    """Freeze what `config.trainable_layers` leaves out and initialise the head; return the
    counts of trainable and total parameters."""
    mode = config.trainable_layers
    head = head_module(model)
    if mode != "all":
        params = list(model.named_parameters())
        keep = {id(p) for p in head.parameters()}
        if mode == "last_k_blocks":
            chosen = blocks(model)[-config.trainable_blocks :]
            keep |= {id(p) for block in chosen for p in block.parameters()}
            # Everything registered after the last block (final conv, norm, head) trains too.
            last = {id(p) for p in blocks(model)[-1].parameters()}
            positions = [i for i, (_, p) in enumerate(params) if id(p) in last]
            if positions:
                keep |= {id(p) for _, p in params[max(positions) + 1 :]}
        elif mode == "norms_and_head":
            norms = [m for m in model.modules() if isinstance(m, _NORMS)]
            keep |= {id(p) for m in norms for p in m.parameters()}
            keep |= {id(p) for name, p in params if name.rsplit(".", 1)[-1].endswith("gain")}
        elif mode == "bias_and_head":
            keep |= {id(p) for name, p in params if name.rsplit(".", 1)[-1] == "bias"}
        for _, p in params:
            p.requires_grad_(id(p) in keep)
    head_init = config.head_init
    if head_init == "auto":
        head_init = "default" if mode == "all" else "zero"
    if head_init == "zero":
        nn.init.zeros_(head.weight)
        if head.bias is not None:
            nn.init.zeros_(head.bias)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    if trainable == 0:
        raise TrainerError(f"trainable_layers={mode} leaves nothing to train; choose another.")
    log.info("trainable_layers=%s: %d of %d parameters train", mode, trainable, total)
    return {"trainable_parameters": trainable, "total_parameters": total}


def set_frozen_modes(model: nn.Module, config: TrainConfig) -> None:
    """After `model.train()`: with only the head training, the frozen backbone runs in eval
    mode (no dropout or drop-path), so it is a fixed function of the input — what makes its
    features cacheable (trainers.features)."""
    if config.trainable_layers != "head":
        return
    head = head_module(model)
    for module in model.modules():
        module.train(False)
    head.train(True)
