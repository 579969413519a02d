"""The training loop's endless supply of batches for one rank.

A resumed run reseeds the stream from (data seed, first step), so it sees fresh samples
rather than a replay of the ones before the stop; an exhausted stream is restarted (one
epoch per pass), so every rank always runs exactly ``cfg.steps`` steps.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch

from snapper.config import TrainConfig
from snapper.data.train_stream import train_loader

# (config, rank, world size) -> an iterable of batches; tests and benchmarks pass their own.
LoaderFactory = Callable[[TrainConfig, int, int], Iterable[dict[str, Any]]]


def default_loader(cfg: TrainConfig, rank: int, world_size: int) -> Iterable[dict[str, Any]]:
    return train_loader(cfg, rank=rank, world_size=world_size)


def derive_seed(seed: int, step: int) -> int:
    """A stream seed for a (re)start at ``step``; step 0 keeps the configured seed."""
    if step == 0:
        return int(seed)
    digest = hashlib.blake2b(f"{seed}:{step}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "little") & 0x7FFFFFFF


class Batches:
    """Endless training batches for one rank.

    The loader is built once per call of :func:`snapper.training.loop.train`, with its data seed
    derived from (data seed, first step); each pass over it is one epoch (``TrainLoader``
    advances its own epoch counter). Batches go to the device through the loader's
    ``to_device`` when it has one (``crop_on="device"`` cuts crops there).
    """

    def __init__(self, cfg: TrainConfig, start_step: int, rank: int, world_size: int, factory: LoaderFactory):
        data = dataclasses.replace(cfg.data, seed=derive_seed(cfg.data.seed, start_step))
        self.loader = factory(dataclasses.replace(cfg, data=data), rank, world_size)
        self.rank = rank
        self.shards = cfg.data.train_shards
        self._it: Iterator[dict[str, Any]] | None = None
        self._n_this_epoch = 0

    def next(self, device: torch.device) -> dict[str, Any]:
        while True:
            if self._it is None:
                self._it, self._n_this_epoch = iter(self.loader), 0
            try:
                batch = next(self._it)
            except StopIteration:
                if self._n_this_epoch == 0:
                    raise RuntimeError(f"the training stream yielded no batch (rank {self.rank}); check "
                                       f"data.train_shards={self.shards!r}") from None
                self._it = None
                continue
            self._n_this_epoch += 1
            to_device = getattr(self.loader, "to_device", None)
            if to_device is not None:
                return to_device(batch, device)
            return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v
                    for k, v in batch.items()}

    def stats(self) -> dict[str, Any] | None:
        s = getattr(self.loader, "stats", None)
        return s.as_dict() if s is not None and hasattr(s, "as_dict") else None
