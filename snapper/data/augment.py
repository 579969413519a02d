"""Training augmentation: left-right mirroring (crops and their edge targets together) and
per-crop colour jitter.

The random parameters are drawn by the loader's generator (:func:`draw_augment`) and applied
separately (:func:`augment`), so cutting crops in a worker or on the training device gives the
same samples for the same seed.
"""

from __future__ import annotations

import numpy as np
import torch

from snapper.config import DataConfig


def hflip_targets(targets: torch.Tensor, size: int) -> torch.Tensor:
    """Edges (left, top, right, bottom) of a mirrored crop: left' = S - right, right' = S - left."""
    t = targets.clone()
    t[..., 0] = size - targets[..., 2]
    t[..., 2] = size - targets[..., 0]
    return t


def augment(
    crops: torch.Tensor,
    targets: torch.Tensor,
    flip: torch.Tensor | None = None,
    color: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mirror the flagged crops (and their targets) and apply per-crop colour factors.

    ``crops`` (k, 3, S, S) float in [0, 255], ``targets`` (k, 4) input px; ``flip`` (k,) bool;
    ``color`` (k, 3) = brightness, contrast, saturation factors (1 = unchanged).
    """
    size = crops.shape[-1]
    crops = crops.to(torch.float32)
    if flip is not None and bool(flip.any()):
        flip = flip.to(crops.device)
        crops = crops.clone()
        crops[flip] = crops[flip].flip(-1)
        targets = torch.where(flip.view(-1, 1), hflip_targets(targets, size), targets)
    if color is not None:
        # brightness b, saturation s (blend with luma), contrast c (blend with the mean luma) are
        # all affine in RGB: x' = c b (s I + (1 - s) 1 lum^T) x + (1 - c) b mean(lum . x),
        # one batched 3x3 matmul instead of a pass per operation
        k = crops.shape[0]
        f = color.to(crops.device, torch.float32)
        b, c, s = f[:, 0], f[:, 1], f[:, 2]
        lum = torch.tensor([0.299, 0.587, 0.114], device=crops.device)
        eye = torch.eye(3, device=crops.device)
        mat = (c * b).view(k, 1, 1) * (s.view(k, 1, 1) * eye + (1 - s).view(k, 1, 1) * lum.view(1, 1, 3))
        flat = crops.reshape(k, 3, -1)
        offset = (1 - c) * b * (flat.mean(2) @ lum)
        crops = torch.baddbmm(offset.view(k, 1, 1), mat, flat).clamp_(0, 255).view_as(crops)
    return crops, targets


def draw_augment(rng: np.random.Generator, k: int, data: DataConfig) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(flip (k,) bool, colour factors (k, 3) or None) for k crops. The draw order (flips,
    then colours) is part of a seeded stream's identity: changing it changes every sample."""
    flip = torch.from_numpy(rng.random(k) < 0.5) if data.hflip else torch.zeros(k, dtype=torch.bool)
    color = None
    if data.color_jitter > 0:
        j = data.color_jitter
        color = torch.from_numpy(rng.uniform(1 - j, 1 + j, (k, 3)).astype(np.float32))
    return flip, color
