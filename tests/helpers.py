"""Tiny generated data and training runs for tests (no conftest magic; import what you need).

    from tests.helpers import make_tiny_coco, make_tiny_shards, tiny_train_config

Everything is small enough for a 2-core CI box: a handful of synthetic 128x96 images.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import torch  # noqa: E402

from snapper.config import TrainConfig  # noqa: E402
from snapper.data.coco import load_coco  # noqa: E402
from snapper.data.manifest import shard_urls  # noqa: E402
from snapper.data.shards import shard_dataset, split_by_image  # noqa: E402
from snapper.data.synthetic import generate  # noqa: E402
from snapper.overrides import from_dict
from snapper.training.loop import train  # noqa: E402
from snapper.training.presets import deep_merge, preset_config  # noqa: E402

# The smallest model that still exercises every layer (ResNet-18 needs >= 32 px).
TINY_MODEL: dict[str, Any] = {"trunk": "resnet18", "input_size": 32, "fpn_channels": 16,
                              "decoder_channels": 16, "decoder_layers": 2}


def make_tiny_coco(tmp_path: str | os.PathLike[str], n_images: int = 6, seed: int = 0,
                   width: int = 128, height: int = 96) -> Path:
    """A synthetic COCO dataset (``annotations.json`` + ``images/``); returns the annotations path."""
    return generate(Path(tmp_path) / f"coco-{n_images}-{seed}", num_images=n_images, seed=seed,
                    width=width, height=height, scale_min=1.0, scale_max=1.0)


def make_tiny_shards(tmp_path: str | os.PathLike[str], n_images: int = 8, val_fraction: float = 0.34,
                     shard_size: int = 2, seed: int = 0) -> dict[str, Any]:
    """Synthetic COCO split by image into train/val shards.

    Returns ``{"ann": path, "dir": shard folder, "train": [urls], "val": [urls]}``.
    """
    ann = make_tiny_coco(tmp_path, n_images=n_images, seed=seed)
    images = ann.parent / "images"
    out = Path(tmp_path) / f"shards-{n_images}-{seed}"
    train_ids, val_ids = split_by_image(load_coco(ann, images), val_fraction, seed=seed)
    shard_dataset(ann, images, out, split="train", shard_size=shard_size, image_ids=train_ids)
    shard_dataset(ann, images, out, split="val", shard_size=shard_size, image_ids=val_ids)
    return {"ann": ann, "dir": out, "train": shard_urls(out, "train"), "val": shard_urls(out, "val")}


def tiny_train_config(shards: dict[str, Any], out_dir: str | os.PathLike[str], **overrides: Any) -> TrainConfig:
    """A TrainConfig that takes seconds on CPU (no MLflow unless ``tracking={"enabled": True}``)."""
    base: dict[str, Any] = {
        "model": dict(TINY_MODEL),
        "data": {"train_shards": shards["train"], "val_shards": shards["val"], "workers": 0,
                 "boxes_per_image": 4, "shuffle_buffer": 16, "val_max_boxes": 32},
        "out_dir": str(out_dir), "device": "cpu", "batch_size": 8, "steps": 6, "warmup_steps": 2,
        "log_every": 1, "ckpt_every": 3, "eval_every": 3,
        "tracking": {"enabled": False, "registered_model": None},
    }
    return preset_config("cpu-tiny", deep_merge(base, overrides))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ddp_worker(rank: int, world_size: int, port: int, cfg_dict: dict[str, Any], result_dir: str) -> None:
    """One rank of a CPU/gloo DDP run (for ``torch.multiprocessing.spawn``), set up the way
    torchrun would; writes its TrainResult as ``rank<r>.json`` to ``result_dir``.

    Each rank gets ``<out_dir>/rank<r>`` as its out_dir so a test can see that ranks other
    than 0 write nothing."""
    torch.set_num_threads(1)
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world_size),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    cfg = from_dict(TrainConfig, {**cfg_dict, "out_dir": str(Path(cfg_dict["out_dir"]) / f"rank{rank}")})
    res = train(cfg)
    (Path(result_dir) / f"rank{rank}.json").write_text(json.dumps(res.to_json()))
