"""The learning-rate schedule and the optimiser's parameter groups."""

from __future__ import annotations

import pytest
import torch

from snapper.config import TrainConfig
from snapper.training.schedule import build_optimizer, lr_at, lr_factor, param_groups


def test_lr_schedule_warmup_then_cosine_to_zero():
    f = [lr_factor(s, 10, 100) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(a < b for a, b in zip(f[:9], f[1:10]))  # warm-up rises
    assert all(a >= b for a, b in zip(f[9:], f[10:]))  # cosine falls
    assert lr_factor(100, 10, 100) == pytest.approx(0.0, abs=1e-12)
    assert lr_factor(55, 10, 100) == pytest.approx(0.5)


def test_lr_without_warmup_starts_at_the_base_rate():
    assert lr_factor(0, 0, 10) == pytest.approx(1.0)
    cfg = TrainConfig(lr=1e-3, warmup_steps=4, steps=20)
    assert lr_at(cfg, 0) == pytest.approx(1e-3 / 4)
    assert lr_at(cfg, 3) == pytest.approx(1e-3)


def test_no_weight_decay_on_biases_and_norms():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    decay, no_decay = param_groups(net, 0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert [p.ndim for p in decay["params"]] == [4]  # the conv kernel only
    assert sorted(p.ndim for p in no_decay["params"]) == [1, 1, 1]  # conv bias, BN weight and bias


def test_scheduler_follows_lr_at():
    net = torch.nn.Linear(2, 2)
    cfg = TrainConfig(lr=2e-3, warmup_steps=3, steps=10)
    opt, sched = build_optimizer(net, cfg, torch.device("cpu"))
    for step in range(10):
        assert opt.param_groups[0]["lr"] == pytest.approx(lr_at(cfg, step), rel=1e-12)
        opt.step()
        sched.step()


def test_a_pretrained_trunk_learns_at_a_fraction_of_the_rate():
    from snapper.config import ModelConfig, TrainConfig
    from snapper.models.net import build_model

    net = build_model(ModelConfig(trunk="resnet18", input_size=32, fpn_channels=8, decoder_channels=8,
                                  decoder_layers=1))
    cfg = TrainConfig(lr=1e-3, trunk_lr_mult=0.1, warmup_steps=0, steps=10)
    opt, _ = build_optimizer(net, cfg, torch.device("cpu"))
    trunk = {id(p) for p in net.trunk.parameters()}
    rates = {(id(p) in trunk): g["lr"] for g in opt.param_groups for p in g["params"]}
    assert rates == {False: pytest.approx(1e-3), True: pytest.approx(1e-4)}
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(net.parameters()))
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-3)  # the logged rate is the head's
    legacy, _ = build_optimizer(net, TrainConfig(lr=1e-3), torch.device("cpu"))
    assert len(legacy.param_groups) == 2  # resumable with states saved before the option existed
