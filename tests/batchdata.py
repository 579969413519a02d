"""Shared test data for batch snapping: a rough COCO file with every kind of defect."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from snapper.config import BatchConfig, ModelConfig, SnapSettings
from snapper.models.checkpoint import save_checkpoint
from snapper.models.net import build_model

TINY = ModelConfig(trunk="resnet18", input_size=48, fpn_channels=16, decoder_channels=16, decoder_layers=2)
NAN, INF = float("nan"), float("inf")


def tiny_checkpoint(path: Path, seed: int = 0) -> Path:
    """An untrained tiny model: the tests check plumbing and accounting, not accuracy."""
    torch.manual_seed(seed)
    return save_checkpoint(path, build_model(TINY), TINY)


def _photo(path: Path, size=(80, 60), fmt="JPEG", seed=0) -> None:
    rng = np.random.default_rng(seed)
    arr = (rng.random((size[1], size[0], 3)) * 40).astype(np.uint8)
    arr[12:40, 15:55] = (200, 120, 40)
    Image.fromarray(arr).save(path, format=fmt)


# annotation id -> expected (status, reason)
EXPECTED = {
    1001: ("snapped", None), 1002: ("kept", "crowd"), 1003: ("kept", "degenerate"),
    1004: ("kept", "non_finite"), 1005: ("kept", "non_finite"), 1006: ("kept", "non_finite"),
    1007: ("kept", "outside_image"), 1008: ("kept", "too_small"), 1009: ("kept", "missing_bbox"),
    1010: ("kept", "malformed_bbox"), 1011: ("snapped", None), 1012: ("snapped", None), 1013: ("snapped", None),
    2001: ("snapped", None), 2002: ("snapped", None), 2003: ("snapped", None), 2004: ("snapped", None),
    2005: ("kept", "non_finite"),
    3001: ("kept", "image_missing"), 4001: ("kept", "image_corrupt"), 5001: ("kept", "image_size_mismatch"),
    6001: ("kept", "image_path_invalid"), 7001: ("snapped", None),
    9001: ("kept", "unknown_image"), 9002: ("kept", "unknown_image"),
}


def make_rough(root: Path) -> tuple[Path, Path, dict]:
    """A rough COCO file with one annotation of every kind of defect."""
    images = root / "images"
    images.mkdir(parents=True)
    _photo(images / "a.jpg", seed=1)
    _photo(images / "b.jpg", seed=2)
    (images / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg" * 3)
    _photo(images / "mismatch.jpg", seed=3)
    _photo(images / "nosize.png", fmt="PNG", seed=4)
    _photo(images / "unused.jpg", seed=5)
    (root / "escape.jpg").write_bytes((images / "a.jpg").read_bytes())
    im = lambda i, name, w=80, h=60: {"id": i, "file_name": name, "width": w, "height": h}  # noqa: E731
    ann = lambda i, img, bbox, **kw: {"id": i, "image_id": img, "category_id": 1, "bbox": bbox, "iscrowd": 0, **kw}  # noqa: E731
    data = {
        "info": {"description": "rough boxes from the crowd"},
        "licenses": [{"id": 1, "name": "x"}],
        "images": [im(1, "a.jpg"), im(2, "b.jpg"), im(3, "missing.jpg"), im(4, "corrupt.jpg"),
                   im(5, "mismatch.jpg", w=100), im(6, "../escape.jpg"), {"id": 7, "file_name": "nosize.png"},
                   im(8, "unused.jpg")],
        "categories": [{"id": 1, "name": "thing"}, {"id": 2, "name": "other"}],
        "annotations": [
            ann(1001, 1, [14.5, 11.0, 41.0, 30.0], area=1230.0),
            ann(1002, 1, [5, 5, 20, 20], iscrowd=1, segmentation={"counts": [0, 10], "size": [60, 80]}),
            ann(1003, 1, [10, 10, 0, 5]),
            ann(1004, 1, [NAN, 1, 2, 3]),
            ann(1005, 1, [1, 1, INF, 3]),
            ann(1006, 1, [None, 1, 2, 3]),
            ann(1007, 1, [500, 10, 5, 5]),
            ann(1008, 1, [10, 10, 1.5, 8]),
            {"id": 1009, "image_id": 1, "category_id": 1, "iscrowd": 0},
            ann(1010, 1, "14,11,41,30"),
            ann(1011, 1, [-10, -5, 40, 30]),
            ann(1012, 1, [16, 13, 38, 26], area=123.0, segmentation=[[16, 13, 54, 13, 54, 39, 16, 39]]),
            ann(1013, 1, [15, 12, 40, 28], worker_id="w7", attributes={"occluded": True}, category_id=2),
            ann(2001, 2, [13, 10, 44, 31], object_id="obj-1"),
            ann(2002, 2, [16, 13, 37, 25], object_id="obj-1", category_id=2),
            ann(2003, 2, [15, 11, 41, 30], object_id="obj-1"),
            ann(2004, 2, [20, 20, 20, 15], object_id="obj-2"),
            ann(2005, 2, [NAN, 20, 20, 15], object_id="obj-3"),
            ann(3001, 3, [10, 10, 30, 20]),
            ann(4001, 4, [10, 10, 30, 20]),
            ann(5001, 5, [10, 10, 30, 20]),
            ann(6001, 6, [10, 10, 30, 20]),
            ann(7001, 7, [14, 11, 41, 30]),
            ann(9001, 999, [10, 10, 30, 20]),
            {"id": 9002, "category_id": 1, "bbox": [10, 10, 30, 20]},
        ],
    }
    path = root / "rough.json"
    path.write_text(json.dumps(data))
    return path, images, data


def fast_config(**kw) -> BatchConfig:
    """Small chunks and batches, no worker processes, CPU: quick and deterministic (keys of
    SnapSettings go to ``snap``). The broken-box guard is off unless asked for: these tests run
    untrained tiny models, whose raw boxes (often collapsed) are what they check the plumbing with."""
    snap_keys = {f.name for f in dataclasses.fields(SnapSettings)}
    snap = SnapSettings(**{"batch_size": 4, "device": "cpu", "guard": False,
                           **{k: v for k, v in kw.items() if k in snap_keys}})
    return BatchConfig(**{"chunk_images": 2, "workers": 0, **{k: v for k, v in kw.items() if k not in snap_keys}},
                       snap=snap)


def same(a, b) -> bool:
    """Equal as JSON (NaN-safe; 10**400 stays an exact int)."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def assert_accounted(out_json: Path, data: dict) -> dict[int, dict]:
    """The accounting invariant of a batch run: every input annotation id exactly once, in
    input order, and every kept annotation unchanged but for its ``"snapper"`` object.
    Returns the ``"snapper"`` objects by annotation id."""
    out = json.loads(Path(out_json).read_text())
    assert [a["id"] for a in out["annotations"]] == [a["id"] for a in data["annotations"]]
    for a, src in zip(out["annotations"], data["annotations"]):
        if a["snapper"]["status"] == "kept":
            assert same({k: v for k, v in a.items() if k != "snapper"}, src), a["id"]
    return {a["id"]: a["snapper"] for a in out["annotations"]}
