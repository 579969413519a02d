"""Augmentation: mirrored crops keep their targets, colour jitter is the composed affine map,
and the random draws come from the loader's generator in a fixed order."""

from __future__ import annotations

import numpy as np
import torch

from snapper.config import DataConfig
from snapper.data.augment import augment, draw_augment, hflip_targets
from tests.data.shardfactory import BG, FG, measured_edges


def test_color_jitter_is_the_composed_affine_map():
    torch.manual_seed(0)
    x = torch.rand(5, 3, 8, 8) * 255
    f = torch.empty(5, 3).uniform_(0.8, 1.2)
    b, c, s = (f[:, i].view(-1, 1, 1, 1) for i in range(3))
    y = x * b  # brightness, then saturation (blend with luma), then contrast (blend with mean luma)
    gray = (y * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    y = gray + (y - gray) * s
    y = gray.mean((2, 3), keepdim=True) + (y - gray.mean((2, 3), keepdim=True)) * c
    got, _ = augment(x.clone(), torch.zeros(5, 4), None, f)
    torch.testing.assert_close(got, y.clamp(0, 255), atol=1e-3, rtol=0)


def test_hflip_keeps_crop_and_target_consistent():
    # a crop with a bright band at columns [5, 12)
    crop = torch.full((1, 3, 32, 32), float(BG))
    crop[:, :, 8:20, 5:12] = FG
    target = torch.tensor([[5.0, 8.0, 12.0, 20.0]])
    flipped, t = augment(crop, target, torch.tensor([True]))
    assert t.tolist() == [[20.0, 8.0, 27.0, 20.0]] == hflip_targets(target, 32).tolist()
    np.testing.assert_allclose(measured_edges(flipped[0].to(torch.uint8)), t[0].numpy())
    same, t0 = augment(crop, target, torch.tensor([False]))
    assert torch.equal(same, crop) and torch.equal(t0, target)


def test_draws_follow_the_config_and_the_generator():
    flip, color = draw_augment(np.random.default_rng(0), 6, DataConfig(hflip=True, color_jitter=0.2))
    assert flip.dtype == torch.bool and flip.shape == (6,) and color.shape == (6, 3)
    assert ((color >= 0.8) & (color <= 1.2)).all()
    # flips first, then colours, from the same generator: the order is part of a seeded stream
    rng = np.random.default_rng(0)
    assert torch.equal(flip, torch.from_numpy(rng.random(6) < 0.5))
    assert torch.equal(color, torch.from_numpy(rng.uniform(0.8, 1.2, (6, 3)).astype(np.float32)))
    off, none = draw_augment(np.random.default_rng(0), 3, DataConfig(hflip=False, color_jitter=0.0))
    assert not off.any() and none is None
