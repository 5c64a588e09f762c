"""Learning-rate schedules of the training reference (spec: "Training reference").

`cosine_restarts` (the default, what the reference run's report names): cosine from `lr` down to a
true floor `min_lr` over `restart_period` steps, then restart at `lr`; an optional linear warm-up
comes first. `poly_reference`: the reference code as written, lr * max((1 - step/N)^0.96, min_lr),
which applies min_lr as a factor and so decays to ~lr * min_lr, not to min_lr.
"""

from __future__ import annotations

import math

import torch

from irt4.config import TrainerConfig


def lr_at(step: int, cfg: TrainerConfig) -> float:
    """Learning rate of the optimizer step that follows `step` completed steps."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    step -= cfg.warmup_steps
    if cfg.lr_schedule == "poly_reference":
        remaining = max(1.0 - step / cfg.train_num_steps, 0.0)
        return cfg.lr * max(remaining**0.96, cfg.min_lr)
    phase = (step % cfg.restart_period) / cfg.restart_period
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1.0 + math.cos(math.pi * phase))


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainerConfig
) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR over `lr_at`; the optimizer's base lr must be cfg.lr. Its state is plain numbers
    (a closure is not saved), so it round-trips through weights_only checkpoints."""

    def factor(step: int) -> float:
        return lr_at(step, cfg) / cfg.lr

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
