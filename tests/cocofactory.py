"""Tiny COCO datasets for the data-pipeline tests (PIL-generated images, a few KB each)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image


def image_bytes(width: int, height: int, seed: int, fmt: str = "JPEG") -> bytes:
    """Distinct content per seed so that byte-identity checks mean something."""
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


def make_dataset(
    root: Path,
    n_images: int = 6,
    boxes_per_image: int = 3,
    size: tuple[int, int] = (64, 48),
) -> tuple[Path, Path, dict[str, Any]]:
    """Write ``root/images/*.jpg`` and ``root/annotations.json``; return (ann, images, data).

    Image ids start at 1 and step by 7 (so ids differ from positions); annotation ids are
    100 * image id + k.
    """
    images_dir = root / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    w, h = size
    data: dict[str, Any] = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "thing"}]}
    for i in range(n_images):
        image_id = 1 + 7 * i
        name = f"img_{i:03d}.jpg"
        (images_dir / name).write_bytes(image_bytes(w, h, seed=image_id))
        data["images"].append({"id": image_id, "file_name": name, "width": w, "height": h})
        for k in range(boxes_per_image):
            x, y = 2.5 + 3 * k, 1.25 + 2 * k
            data["annotations"].append({
                "id": 100 * image_id + k, "image_id": image_id, "category_id": 1,
                "bbox": [x, y, 20.0 + k, 15.5], "area": (20.0 + k) * 15.5, "iscrowd": 0,
            })
    ann = write_json(root / "annotations.json", data)
    return ann, images_dir, data


def write_json(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(data))  # NaN is written as the NaN literal, as Python tools do
    return path


def add_image(root: Path, data: dict[str, Any], image_id: int, name: str, payload: bytes,
              width: int = 64, height: int = 48, boxes: list[list[Any]] | None = None) -> list[int]:
    """Add one image (arbitrary file bytes) with boxes; returns the new annotation ids."""
    (root / "images" / name).write_bytes(payload)
    data["images"].append({"id": image_id, "file_name": name, "width": width, "height": height})
    ids = []
    for k, b in enumerate(boxes if boxes is not None else [[1, 1, 10, 10]]):
        ann_id = 100 * image_id + k
        data["annotations"].append({"id": ann_id, "image_id": image_id, "category_id": 1, "bbox": b, "iscrowd": 0})
        ids.append(ann_id)
    return ids
