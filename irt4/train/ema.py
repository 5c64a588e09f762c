"""Exponential moving average of the trained weights, as the reference's `ema_pytorch.EMA` runs it.

Every `update_every` steps: up to `update_after_step` the average is a plain copy of the weights,
after it shadow = beta shadow + (1 - beta) weights (fixed beta; the reference's library ramps beta
up from 0 after the start step, which matters little at beta 0.999 and 10k start steps).
Buffers are copied. The average starts as a copy of the model.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    def __init__(self, model: nn.Module, beta: float, update_after_step: int, update_every: int):
        self.model = model
        self.shadow = copy.deepcopy(model).eval().requires_grad_(False)
        self.beta = beta
        self.update_after_step = update_after_step
        self.update_every = update_every

    @torch.no_grad()
    def update(self, step: int) -> None:
        """Call after the optimizer step that made `step` completed steps."""
        if step % self.update_every:
            return
        shadow_params = [p for p in self.shadow.parameters()]
        params = [p.detach() for p in self.model.parameters()]
        if step <= self.update_after_step:
            torch._foreach_copy_(shadow_params, params)
        else:
            torch._foreach_lerp_(shadow_params, params, 1.0 - self.beta)
        for shadow_buffer, buffer in zip(self.shadow.buffers(), self.model.buffers()):
            shadow_buffer.copy_(buffer)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.shadow.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.shadow.load_state_dict(state)
