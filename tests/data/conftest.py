"""Data each test builds for itself (in its own tmp_path), so no test depends on what an
earlier one left behind."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest

from snapper.data.manifest import Manifest
from snapper.data.shards import shard_dataset
from tests.data.shardfactory import rect_samples, write_coco_folder, write_shards


@pytest.fixture
def rect_shards(tmp_path: Path) -> Callable[..., list[str]]:
    """``rect_shards(n_images, per_shard=2, **rect_samples options)`` -> shard paths under
    this test's tmp_path (a fresh folder per call)."""
    calls = iter(range(1_000))

    def make(n_images: int, per_shard: int = 2, **kw) -> list[str]:
        return write_shards(tmp_path / f"rect-{next(calls)}", rect_samples(n_images, **kw), per_shard)

    return make


@pytest.fixture
def coco_shards(tmp_path: Path) -> tuple[Path, Manifest]:
    """Six two-box rectangle images as a COCO folder, sharded by the real writer (three
    shards of two): (the shard folder, its train manifest)."""
    src = write_coco_folder(tmp_path / "coco", rect_samples(6, boxes=2))
    out = tmp_path / "shards"
    return out, shard_dataset(src / "annotations.json", src / "images", out, shard_size=2)
