"""The data a training flow runs on: the embedded synthetic dataset generated and sharded on
first use (both steps idempotent), a COCO dataset sharded from ``ann_file`` + ``images_dir``,
or shards that are ready (a folder under ``shards/``, or explicit webdataset URLs).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task

from flows.common import SYNTHETIC, resolve, synthetic_name
from flows.shard import shard_coco
from snapper.data.manifest import shard_urls
from snapper.data.synthetic import generate
from snapper.errors import ConfigError


@task(name="synthesize-data")
def synth_task(out_dir: str, num_images: int, seed: int) -> str:
    return str(generate(out_dir, num_images=num_images, seed=seed))


@task(name="shard-urls")
def shard_urls_task(out_dir: str, split: str) -> list[str]:
    return shard_urls(out_dir, split)


def ensure_data(
    dataset: str,
    ann_file: str | None,
    images_dir: str | None,
    num_images: int,
    val_fraction: float,
    shard_size: int,
    seed: int,
) -> dict[str, list[str]]:
    """Train/val shard URLs, generating and sharding what is missing (idempotent)."""
    if ann_file is None:
        if dataset != SYNTHETIC:
            # A dataset that was sharded before: shards/<dataset>/{train,val}-manifest.json.
            root = str(resolve(Path("shards") / dataset))
            return {"train": shard_urls_task(root, "train"), "val": shard_urls_task(root, "val")}
        # One folder per generator setting, so a small CI run never replaces the demo's data.
        dataset = synthetic_name(num_images, seed)
        data_dir = resolve(Path("data") / dataset)
        ann_file = synth_task(str(data_dir), num_images, seed)
        images_dir = str(data_dir / "images")
    if images_dir is None:
        raise ConfigError("ann_file needs images_dir")
    out = str(resolve(Path("shards") / dataset))
    shard_coco(
        ann_file=str(ann_file), images_dir=str(images_dir), out_dir=out, dataset=dataset, split="train",
        val_fraction=val_fraction, seed=seed, shard_size=shard_size,
    )
    return {"train": shard_urls_task(out, "train"), "val": shard_urls_task(out, "val")}


def flow_shards(train_shards: list[str] | None, val_shards: list[str] | None, **data: Any) -> dict[str, list[str]]:
    """Explicit shard lists, else :func:`ensure_data`'s (explicit val shards win)."""
    if train_shards:
        shards = {"train": list(train_shards), "val": list(val_shards or [])}
    else:
        shards = ensure_data(**data)
        if val_shards:
            shards["val"] = list(val_shards)
    if not shards["val"]:
        raise ConfigError("no validation shards: set val_fraction > 0 or pass val_shards (evaluation needs held-out data)")
    return shards
