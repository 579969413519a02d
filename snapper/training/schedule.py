"""Optimiser and learning-rate schedule: AdamW, linear warm-up, cosine decay to 0.

The learning rate is a pure function of the optimizer step, so a resumed run follows exactly
the schedule of an uninterrupted one (the scheduler's state is only its step count).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from snapper.config import TrainConfig


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Multiplier of the base LR for optimizer step ``step`` (0-based): linear warm-up from
    1/warmup to 1, then cosine decay to 0 at ``total``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    span = max(total - warmup, 1)
    progress = min(max(step - warmup, 0) / span, 1.0)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def lr_at(cfg: TrainConfig, step: int) -> float:
    return cfg.lr * lr_factor(step, cfg.warmup_steps, cfg.steps)


def param_groups(model: torch.nn.Module, weight_decay: float, lr: float | None = None,
                 trunk_lr_mult: float = 1.0) -> list[dict[str, Any]]:
    """No weight decay on biases and norm scales (1-D tensors): decaying them only hurts.
    With ``trunk_lr_mult != 1`` the trunk's parameters get ``lr * trunk_lr_mult``: new layers
    learn at full speed while pretrained features are only adjusted. The head's groups come
    first, so ``param_groups[0]["lr"]`` is the base rate."""

    def split(params: list[torch.nn.Parameter], group_lr: float | None) -> list[dict[str, Any]]:
        extra = {} if group_lr is None else {"lr": group_lr}
        return [{"params": [p for p in params if p.ndim > 1], "weight_decay": weight_decay, **extra},
                {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0, **extra}]

    params = [p for p in model.parameters() if p.requires_grad]
    trunk = getattr(model, "trunk", None)
    if trunk_lr_mult == 1.0 or trunk is None:
        return split(params, None)
    in_trunk = {id(p) for p in trunk.parameters()}
    head = [p for p in params if id(p) not in in_trunk]
    body = [p for p in params if id(p) in in_trunk]
    return split(head, lr) + split(body, None if lr is None else lr * trunk_lr_mult)


def build_optimizer(
    model: torch.nn.Module, cfg: TrainConfig, device: torch.device
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW (fused on CUDA) and its warm-up + cosine schedule over ``cfg.steps``."""
    groups = param_groups(model, cfg.weight_decay, cfg.lr, cfg.trunk_lr_mult)
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr,
                                  **({"fused": True} if device.type == "cuda" else {}))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, cfg.warmup_steps, cfg.steps))
    return optimizer, scheduler
