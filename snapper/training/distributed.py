"""DDP plumbing for training under torchrun: the process group and the few collectives the
loop needs. Every helper is a no-op in a single process, so the loop has no ``if ddp`` forks.

Why so few collectives: the WebDataset stream splits shards by rank and every rank runs
exactly ``cfg.steps`` steps, so ranks stay in lockstep without a DistributedSampler; rank 0
alone logs, validates and writes, and the others only need its decisions (early stop) and,
at the end, its buffers (BatchNorm statistics).
"""

from __future__ import annotations

import datetime
import hashlib
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from snapper.models.checkpoint import unwrap

# Validation runs on rank 0 while the others wait at a barrier: more than the default timeout.
PROCESS_GROUP_TIMEOUT = datetime.timedelta(minutes=60)


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    initialized_here: bool = False  # this process created the group, so it also destroys it

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device_type: str) -> DistInfo:
    """Join the process group torchrun describes (WORLD_SIZE, RANK, LOCAL_RANK, MASTER_*)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), local, False)
    backend = "nccl" if device_type == "cuda" else "gloo"
    if device_type == "cuda":
        torch.cuda.set_device(local)
    dist.init_process_group(backend=backend, rank=rank, world_size=world, timeout=PROCESS_GROUP_TIMEOUT)
    return DistInfo(rank, world, local, True)


def shutdown(info: DistInfo) -> None:
    if info.initialized_here:
        dist.destroy_process_group()


def barrier(info: DistInfo, device: torch.device) -> None:
    if not info.enabled:
        return
    if device.type == "cuda":
        dist.barrier(device_ids=[device.index or 0])
    else:
        dist.barrier()


def broadcast_flag(info: DistInfo, value: bool, device: torch.device) -> bool:
    """Rank 0's decision (e.g. early stop) for every rank."""
    if not info.enabled:
        return value
    t = torch.tensor([1.0 if value else 0.0], device=device)
    dist.broadcast(t, src=0)
    return bool(t.item() > 0.5)


def sync_buffers(info: DistInfo, net: torch.nn.Module) -> None:
    """Give every rank rank 0's buffers (BatchNorm statistics), as DDP does at each forward:
    after the last step each rank still holds its own, and all ranks should end identical."""
    if not info.enabled:
        return
    for b in net.buffers():
        dist.broadcast(b.data, src=0)


def mean_across(info: DistInfo, value: float, device: torch.device) -> float:
    if not info.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64 if device.type == "cpu" else torch.float32, device=device)
    dist.all_reduce(t)
    return float(t.item()) / info.world_size


def gather_objects(info: DistInfo, obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order (a collective: all ranks must call it together)."""
    if not info.enabled:
        return [obj]
    every: list[Any] = [None] * info.world_size
    dist.all_gather_object(every, obj)
    return every


def weights_digest(model: torch.nn.Module) -> str:
    """sha256 of the weights and buffers: equal on every rank when the replicas are in sync."""
    h = hashlib.sha256()
    for k, v in sorted(unwrap(model).state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes()
                 if v.numel() else b"")
    return h.hexdigest()
