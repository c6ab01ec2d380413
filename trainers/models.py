"""Models: our own architectures (registered by name with `register_model`: the small CNNs of
Tramèr & Boneh 2021, De et al.'s WRNs) and any timm model, made DP-compatible."""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType

import torch
from torch import nn

from trainers.config import TrainConfig, TrainerError

log = logging.getLogger(__name__)

ModelFactory = Callable[[int, int, int], nn.Module]
"""(in_channels, num_classes, image_size) → a freshly initialised model."""

_MODELS: dict[str, ModelFactory] = {}

BUILTIN_MODELS: Mapping[str, ModelFactory] = MappingProxyType(_MODELS)
"""Our own architectures by name (a read-only live view of the registry). `config.model`
names one of these or, failing that, a timm model."""


def register_model(factory: ModelFactory) -> ModelFactory:
    """Decorator: register an architecture of our own under its function's name (like timm's
    `@register_model`); it takes precedence over a timm model of the same name."""
    name = factory.__name__
    if _MODELS.get(name, factory) is not factory:
        raise TrainerError(f"two models are named {name!r}; rename one of them")
    _MODELS[name] = factory
    return factory


@register_model
def tramer_boneh_cnn(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    """The end-to-end tanh CNN for (Fashion-)MNIST of Tramèr & Boneh, ICLR 2021 (Table 9).

    conv 16×8×8 stride 2 → maxpool 2, stride 1 → conv 32×4×4 stride 2 → maxpool 2, stride 1 →
    fc 32 → fc num_classes, tanh activations.
    """
    features = nn.Sequential(
        nn.Conv2d(in_channels, 16, 8, stride=2, padding=2),
        nn.Tanh(),
        nn.MaxPool2d(2, 1),
        nn.Conv2d(16, 32, 4, stride=2),
        nn.Tanh(),
        nn.MaxPool2d(2, 1),
        nn.Flatten(),
    )
    width = _flat_width(features, in_channels, image_size)
    return nn.Sequential(*features, nn.Linear(width, 32), nn.Tanh(), nn.Linear(32, num_classes))


@register_model
def tramer_boneh_cifar_cnn(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    """The end-to-end tanh CNN for CIFAR-10 of Tramèr & Boneh, ICLR 2021 (Table 10).

    Three blocks of two 3×3 convs (32, 64, 128 channels) each followed by 2×2 max pooling,
    then fc 128 → fc num_classes, tanh activations.
    """
    layers: list[nn.Module] = []
    channels = in_channels
    for width in (32, 64, 128):
        layers += [
            nn.Conv2d(channels, width, 3, padding=1),
            nn.Tanh(),
            nn.Conv2d(width, width, 3, padding=1),
            nn.Tanh(),
            nn.MaxPool2d(2, 2),
        ]
        channels = width
    features = nn.Sequential(*layers, nn.Flatten())
    width = _flat_width(features, in_channels, image_size)
    return nn.Sequential(*features, nn.Linear(width, 128), nn.Tanh(), nn.Linear(128, num_classes))


@register_model
def scatter_linear(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    """Tramèr & Boneh's ScatterNet + linear (ICLR 2021): a linear classifier on the
    (normalised) features of `frontend=scatternet`, 81×7×7 → classes on (Fashion-)MNIST."""
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size**2, num_classes))


@register_model
def scatter_cnn(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    """Tramèr & Boneh's small CNN on ScatterNet features for (Fashion-)MNIST: conv 16×3×3
    stride 2 → conv 32×3×3 → fc 32 → fc classes, tanh activations (use with a frontend)."""
    features = nn.Sequential(
        nn.Conv2d(in_channels, 16, 3, stride=2, padding=1),
        nn.Tanh(),
        nn.Conv2d(16, 32, 3, stride=1, padding=1),
        nn.Tanh(),
        nn.Flatten(),
    )
    width = _flat_width(features, in_channels, image_size)
    return nn.Sequential(*features, nn.Linear(width, 32), nn.Tanh(), nn.Linear(32, num_classes))


class _WideBasicBlock(nn.Module):
    """Pre-activation residual block: GroupNorm → ReLU → WS conv, twice (De et al. 2022)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, groups: int) -> None:
        from timm.layers import StdConv2d

        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_channels)
        self.conv1 = StdConv2d(in_channels, out_channels, 3, stride=stride, padding=1)
        self.norm2 = nn.GroupNorm(groups, out_channels)
        self.conv2 = StdConv2d(out_channels, out_channels, 3, stride=1, padding=1)
        self.shortcut = None
        if stride != 1 or in_channels != out_channels:
            self.shortcut = StdConv2d(in_channels, out_channels, 1, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.norm1(x))
        shortcut = x if self.shortcut is None else self.shortcut(out)
        out = self.conv1(out)
        out = self.conv2(torch.relu(self.norm2(out)))
        return out + shortcut


class WideResNet(nn.Module):
    """WRN-d-k with weight-standardised convs and GroupNorm: De et al.'s (2022) CIFAR-10
    network trained from scratch with DP-SGD (WRN-16-4: 2.7 M parameters).

    Weight standardisation makes each conv's effective weight (W − mean) / std a fixed,
    data-independent function of W, so per-example gradients of W are exact (Opacus computes
    them through the standardisation, timm's `StdConv2d` having no dedicated grad sampler).
    """

    def __init__(self, depth: int, widen: int, in_channels: int, num_classes: int) -> None:
        from timm.layers import StdConv2d

        super().__init__()
        if (depth - 4) % 6:
            raise TrainerError(f"a WRN's depth must be 6n + 4 (got {depth}).")
        per_group = (depth - 4) // 6
        widths = [16, 16 * widen, 32 * widen, 64 * widen]
        groups = 16
        self.stem = StdConv2d(in_channels, widths[0], 3, padding=1)
        blocks: list[nn.Module] = []
        for group, width in enumerate(widths[1:]):
            for i in range(per_group):
                stride = 2 if group > 0 and i == 0 else 1
                source = widths[group] if i == 0 else width
                blocks.append(_WideBasicBlock(source, width, stride, math.gcd(groups, source)))
        self.blocks = nn.Sequential(*blocks)
        self.norm = nn.GroupNorm(groups, widths[-1])
        self.head = nn.Linear(widths[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.norm(self.blocks(self.stem(x))))
        return self.head(x.mean(dim=(2, 3)))


@register_model
def wrn_16_4(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    """WRN-16-4 (De et al. 2022's CIFAR-10 network from scratch)."""
    return WideResNet(16, 4, in_channels, num_classes)


@register_model
def wrn_10_1(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    """WRN-10-1: a small sibling of WRN-16-4 for smoke runs."""
    return WideResNet(10, 1, in_channels, num_classes)


def _flat_width(features: nn.Module, in_channels: int, image_size: int) -> int:
    with torch.no_grad():
        return features(torch.zeros(1, in_channels, image_size, image_size)).shape[1]


def build_model(
    config: TrainConfig, *, in_channels: int, num_classes: int, image_size: int
) -> nn.Module:
    """The model named by `config.model`, initialised from `config.seed`, ready for Opacus."""
    torch.manual_seed(config.seed)
    if config.model in BUILTIN_MODELS:
        if config.pretrained or config.pretrained_file:
            raise TrainerError(
                f"the built-in model {config.model!r} has no pretrained weights; "
                "set pretrained=false or choose a timm model."
            )
        return BUILTIN_MODELS[config.model](in_channels, num_classes, image_size)
    model = _create_timm_model(
        config, in_channels=in_channels, num_classes=num_classes, image_size=image_size
    )
    return make_dp_compatible(
        model, example_input=torch.zeros(2, in_channels, image_size, image_size)
    )


def _create_timm_model(
    config: TrainConfig, *, in_channels: int, num_classes: int, image_size: int
) -> nn.Module:
    import timm

    if not timm.is_model(config.model):
        raise TrainerError(
            f"unknown model {config.model!r}; use one of {', '.join(BUILTIN_MODELS)} "
            "or a timm model name (python -c 'import timm; print(timm.list_models())')."
        )
    kwargs: dict = {"num_classes": num_classes, "in_chans": in_channels}
    pretrained = config.pretrained or config.pretrained_file is not None
    if config.pretrained_file:
        kwargs["pretrained_cfg_overlay"] = {"file": str(check_pretrained_file(config))}
    try:
        try:  # transformers need their input size at construction; CNNs reject the argument
            return timm.create_model(
                config.model, pretrained=pretrained, img_size=image_size, **kwargs
            )
        except TypeError as error:
            if "img_size" not in str(error):
                raise
            return timm.create_model(config.model, pretrained=pretrained, **kwargs)
    except Exception as error:
        if not pretrained:
            raise
        raise TrainerError(
            f"could not load pretrained weights for {config.model} ({type(error).__name__}: "
            "no internet, or no cached copy); download them where there is internet (timm "
            "caches them in ~/.cache/huggingface) and pass --set pretrained_file=PATH, or "
            "--set pretrained=false."
        ) from None


def check_pretrained_file(config: TrainConfig) -> Path | None:
    """The local weights file, checked to exist (called before loading data: fail fast)."""
    if not config.pretrained_file:
        return None
    path = Path(config.pretrained_file).expanduser()
    if not path.is_file():
        raise TrainerError(
            f"pretrained_file {str(path)!r} does not exist; point it at a downloaded "
            f"{config.model} weights file (.safetensors, .bin or .pth)."
        )
    return path


class _CopyOutput(nn.Module):
    """Returns a copy of its wrapped module's output.

    NOTE: Opacus's backward hooks return their module's output as a view; models that modify
    that output in place (ResNet's `x += shortcut`) then fail in autograd. A copy is a tensor
    the model may modify; the hooks, and so per-example gradients, are unchanged.
    """

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, *args, **kwargs):
        output = self.module(*args, **kwargs)
        return output.clone() if isinstance(output, torch.Tensor) else output


class ScalarGain(nn.Module):
    """y = gain · x with one learnable scalar (NFNets' skip-init gain as a layer of its own).

    timm's NormFreeBlock multiplies its residual branch by its own `skipinit_gain` inside its
    forward; a parameter used there makes Opacus compute per-example gradients of the whole
    block with functorch. As a layer, its per-example gradient is Σ g ⊙ x: cheap for both
    Opacus (functorch on one multiply) and the fast clipping engine.
    """

    def __init__(self, gain: nn.Parameter) -> None:
        super().__init__()
        self.gain = gain

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gain


def _skipinit_gains_as_layers(model: nn.Module) -> None:
    # NormFreeBlock.forward: out = drop_path(out); out.mul_(skipinit_gain) — the same as
    # out = ScalarGain(skipinit_gain)(drop_path(out)), after which skipinit_gain is None.
    for module in model.modules():
        gain = getattr(module, "skipinit_gain", None)
        if isinstance(gain, nn.Parameter) and hasattr(module, "drop_path"):
            del module.skipinit_gain  # unregister the parameter …
            module.skipinit_gain = None  # … and let the block skip its own multiply
            module.drop_path = nn.Sequential(module.drop_path, ScalarGain(gain))


def make_dp_compatible(model: nn.Module, *, example_input: torch.Tensor) -> nn.Module:
    """Make a model trainable with Opacus per-example gradients, or explain why it is not.

    1. BatchNorm mixes examples in a batch: every BatchNorm (timm's BatchNormAct2d too, which
       Opacus's `ModuleValidator.fix` misses) becomes GroupNorm; other unsupported layers are
       fixed by Opacus where it can, reported otherwise.
    2. In-place activations modify the outputs Opacus hooks into: they are switched off.
       NFNets' skip-init gains become layers (`ScalarGain`) with cheap per-example gradients.
    3. A probe forward/backward with Opacus hooks on `example_input`; if the model still
       modifies a hooked output in place, each hooked layer's output is copied.
    """
    from opacus.validators import ModuleValidator

    _replace_batchnorm(model)
    _skipinit_gains_as_layers(model)
    model = ModuleValidator.fix(model)
    errors = ModuleValidator.validate(model, strict=False)
    if errors:
        reasons = "; ".join(sorted({str(e) for e in errors}))[:300]
        raise TrainerError(
            f"this model has layers Opacus cannot train privately ({reasons}); choose another "
            "model or replace those layers."
        )
    for module in model.modules():
        if getattr(module, "inplace", False) is True:
            module.inplace = False
    if _modifies_hooked_outputs_in_place(model, example_input):
        log.info("model modifies layer outputs in place; copying outputs of trainable layers")
        _wrap_trainable_leaves(model)
        if _modifies_hooked_outputs_in_place(model, example_input):
            raise TrainerError(
                "this model modifies tensors in place in a way Opacus cannot hook; choose another "
                "model."
            )
    return model


def _replace_batchnorm(model: nn.Module) -> None:
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if not isinstance(child, nn.modules.batchnorm._BatchNorm):
                continue
            channels = child.num_features
            groups = math.gcd(32, channels)  # 32 groups where the channels allow (Wu & He 2018)
            if isinstance(getattr(child, "act", None), nn.Module) and hasattr(child, "drop"):
                from timm.layers import GroupNormAct  # timm's fused norm + activation

                norm = GroupNormAct(channels, num_groups=groups, eps=child.eps, apply_act=False)
                norm.act, norm.drop = child.act, child.drop
            else:
                norm = nn.GroupNorm(groups, channels, eps=child.eps)
            setattr(parent, name, norm)


def _modifies_hooked_outputs_in_place(model: nn.Module, example_input: torch.Tensor) -> bool:
    from opacus import GradSampleModule

    try:
        probe = GradSampleModule(copy.deepcopy(model))
    except NotImplementedError as error:  # Opacus lists the layers it cannot handle
        reasons = "; ".join(sorted({str(e).split("(")[0].strip() for e in error.args[0]}))
        raise TrainerError(
            f"this model has layers Opacus cannot train privately ({reasons}); choose another "
            "model or replace those layers."
        ) from None
    try:
        probe(example_input).float().sum().backward()
    except RuntimeError as error:
        if "modified inplace" in str(error):
            return True
        raise
    finally:
        probe._close()
    return False


def _wrap_trainable_leaves(model: nn.Module) -> None:
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            has_own_params = any(True for _ in child.parameters(recurse=False))
            if has_own_params and not isinstance(child, _CopyOutput):
                setattr(parent, name, _CopyOutput(child))
