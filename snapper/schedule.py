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


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """No weight decay on biases and norm scales (1-D tensors): decaying them only hurts."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(
    model: torch.nn.Module, cfg: TrainConfig, device: torch.device
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW (fused on CUDA) and its warm-up + cosine schedule over ``cfg.steps``."""
    optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr,
                                  **({"fused": True} if device.type == "cuda" else {}))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, cfg.warmup_steps, cfg.steps))
    return optimizer, scheduler
