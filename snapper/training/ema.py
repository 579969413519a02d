"""An exponential moving average of the weights, with torch's own ``AveragedModel``.

Why: with a few hundred training images the weights at any one step are a noisy sample; the
average over the last few hundred steps is usually a better model than its last member (the
same reason torchvision's classification reference and timm keep a model EMA). The average
is what validation scores and what ``best/`` and ``last/`` hold when ``TrainConfig.ema_decay``
is set; the raw weights keep training and stay in ``train_state.pt``.

The decay warms up as ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates (as in
TensorFlow's ``ExponentialMovingAverage`` with ``num_updates``): early in a run the average
follows the weights closely instead of dragging the random-init head along for hundreds of
steps.
"""

from __future__ import annotations

import torch
from torch.optim.swa_utils import AveragedModel


def ema_decay_at(decay: float, updates: int) -> float:
    """The decay applied at the update after ``updates`` earlier ones."""
    return min(decay, (1.0 + updates) / (10.0 + updates))


def build_ema(net: torch.nn.Module, decay: float) -> AveragedModel:
    """An EMA of ``net``'s parameters *and* buffers (BatchNorm statistics are averaged too, so
    they match the averaged weights), on ``net``'s device and memory format, in eval mode."""
    if not 0.0 < decay < 1.0:
        raise ValueError(f"ema_decay must be in (0, 1), got {decay}")

    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], n: torch.Tensor) -> None:
        weight = 1.0 - ema_decay_at(decay, int(n))
        if torch.is_floating_point(averaged[0]):
            torch._foreach_lerp_(averaged, current, weight)
        else:  # integer buffers (BatchNorm's num_batches_tracked): the latest count
            for a, c in zip(averaged, current, strict=True):
                a.copy_(c)

    ema = AveragedModel(net, multi_avg_fn=update, use_buffers=True)  # a deep copy that never trains
    ema.module.eval()
    return ema
