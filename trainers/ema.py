"""Exponential moving average of the parameters (De et al. 2022 evaluate the EMA weights).

Averaging released iterates is post-processing of the DP-SGD outputs: it costs no privacy.
The decay warms up as min(decay, (1 + t) / (10 + t)) after t updates, as in De et al.'s code
(jax_privacy), so the first, random iterates do not dominate the average for long.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn


class ParameterEma:
    """The EMA of a model's trainable parameters, swapped in for evaluation."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must lie in (0, 1) (got {decay})")
        self.decay = decay
        self.updates = 0
        self._params = [p for p in model.parameters() if p.requires_grad]
        self.shadow = [p.detach().clone() for p in self._params]

    @torch.no_grad()
    def update(self) -> None:
        """Call after every optimizer step."""
        self.updates += 1
        decay = min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))
        for shadow, param in zip(self.shadow, self._params, strict=True):
            shadow.lerp_(param.detach(), 1.0 - decay)

    @contextlib.contextmanager
    def swapped_in(self):
        """Inside the block the model's parameters are the EMA; the trained ones after."""
        saved = [p.detach().clone() for p in self._params]
        with torch.no_grad():
            for param, shadow in zip(self._params, self.shadow, strict=True):
                param.copy_(shadow)
        try:
            yield
        finally:
            with torch.no_grad():
                for param, value in zip(self._params, saved, strict=True):
                    param.copy_(value)

    def state_dict(self) -> dict:
        return {"updates": self.updates, "shadow": [s.clone() for s in self.shadow]}

    def load_state_dict(self, state: dict) -> None:
        self.updates = state["updates"]
        for shadow, value in zip(self.shadow, state["shadow"], strict=True):
            shadow.copy_(value)
