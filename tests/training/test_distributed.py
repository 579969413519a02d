"""DDP helpers in one process: no process group, every collective a pass-through.
(Two real gloo processes: tests/test_ddp.py.)"""

from __future__ import annotations

import torch

from snapper.training.distributed import (
    DistInfo,
    barrier,
    broadcast_flag,
    gather_objects,
    init_distributed,
    mean_across,
    shutdown,
    sync_buffers,
    weights_digest,
)

CPU = torch.device("cpu")


def test_single_process_needs_no_process_group(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    info = init_distributed("cpu")
    assert info == DistInfo() and info.is_main and not info.enabled and not info.initialized_here
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert init_distributed("cpu") == DistInfo()
    assert not torch.distributed.is_initialized()
    shutdown(info)  # nothing to destroy


def test_collectives_pass_through_in_one_process():
    info = DistInfo()
    barrier(info, CPU)
    assert broadcast_flag(info, True, CPU) is True and broadcast_flag(info, False, CPU) is False
    assert mean_across(info, 2.5, CPU) == 2.5
    assert gather_objects(info, {"a": 1}) == [{"a": 1}]
    net = torch.nn.BatchNorm1d(2)
    before = net.running_mean.clone()
    sync_buffers(info, net)
    assert torch.equal(net.running_mean, before)


def test_rank_roles():
    assert DistInfo(rank=0, world_size=4).is_main and DistInfo(rank=0, world_size=4).enabled
    assert not DistInfo(rank=3, world_size=4).is_main


def test_weights_digest_sees_weights_and_buffers():
    torch.manual_seed(0)
    a = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    b = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    b.load_state_dict(a.state_dict())
    assert weights_digest(a) == weights_digest(b) and len(weights_digest(a)) == 64
    with torch.no_grad():
        b[0].weight[0, 0] += 1e-6
    assert weights_digest(a) != weights_digest(b)
    b.load_state_dict(a.state_dict())
    b[1].running_mean += 1
    assert weights_digest(a) != weights_digest(b)
