"""The training loop's batches: reseeding on resume, endless epochs, a clear error for none."""

from __future__ import annotations

import pytest
import torch

from snapper.config import TrainConfig
from snapper.training.batches import Batches, derive_seed


def test_stream_reseeded_on_resume():
    assert derive_seed(7, 0) == 7  # a fresh run keeps the configured seed
    seeds = {derive_seed(7, s) for s in (0, 100, 200, 300)}
    assert len(seeds) == 4 and derive_seed(7, 100) == derive_seed(7, 100)


def test_batches_restart_the_stream_and_pass_the_derived_seed():
    seen: list[tuple[int, int, int]] = []

    def factory(cfg: TrainConfig, rank: int, world_size: int):
        seen.append((cfg.data.seed, rank, world_size))
        return [{"image": torch.full((1,), float(i)), "id": i} for i in range(2)]

    b = Batches(TrainConfig(), 100, 1, 2, factory)
    assert seen == [(derive_seed(0, 100), 1, 2)]
    got = [b.next(torch.device("cpu")) for _ in range(5)]
    assert [g["id"] for g in got] == [0, 1, 0, 1, 0]  # a new epoch after the stream ends
    assert got[1]["image"].item() == 1.0 and b.stats() is None


def test_an_empty_stream_is_an_error_naming_the_shards():
    b = Batches(TrainConfig(), 0, 0, 1, lambda cfg, rank, world: [])
    with pytest.raises(RuntimeError, match="yielded no batch"):
        b.next(torch.device("cpu"))
