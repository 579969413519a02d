"""Tiny hand-written shards for the stream tests: images of bright rectangles whose boxes are
known exactly, written as the project's shard format (``<key>.<ext>`` + ``<key>.json``)
without going through the shard writer, so that malformed samples can be made too."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from snapper.config import DataConfig, ModelConfig, TrainConfig

BG, FG, FG2 = 20, 230, 150


def encode(arr: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buf.getvalue()


def rect_image(w: int, h: int, rects: list[list[float]], two_tone: bool = False) -> np.ndarray:
    """Dark image with bright integer rectangles (xywh); two_tone makes the right half dimmer
    so that a mirrored crop can be recognised."""
    arr = np.full((h, w, 3), BG, np.uint8)
    for x, y, rw, rh in rects:
        x, y, rw, rh = int(x), int(y), int(rw), int(rh)
        arr[y : y + rh, x : x + rw] = FG
        if two_tone:
            arr[y : y + rh, x + rw // 2 : x + rw] = FG2
    return arr


def write_shards(root: Path, samples: list[dict], per_shard: int = 2) -> list[str]:
    """Shards in the project format: <key>.<ext> image bytes + <key>.json metadata.
    A sample is {"key", "ext", "image": bytes, "meta": dict or raw bytes}."""
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for s0 in range(0, len(samples), per_shard):
        path = root / f"shard-{s0 // per_shard:05d}.tar"
        with tarfile.open(path, "w") as tf:
            for s in samples[s0 : s0 + per_shard]:
                meta = s["meta"] if isinstance(s["meta"], bytes) else json.dumps(s["meta"]).encode()
                for name, data in ((f"{s['key']}.{s['ext']}", s["image"]), (f"{s['key']}.json", meta)):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tf.addfile(info, io.BytesIO(data))
        paths.append(str(path))
    return paths


def rect_samples(n_images: int, boxes: int = 2, w: int = 96, h: int = 72, seed: int = 0,
                 fmt: str = "PNG", two_tone: bool = False, crowd_every: int = 0) -> list[dict]:
    """Images whose boxes are disjoint bright rectangles, far enough apart that a crop with
    context 1.4 never reaches a second one (one column band per box)."""
    rng = np.random.default_rng(seed)
    out, ann_id = [], 1000
    band = w // boxes
    for i in range(n_images):
        rects, anns = [], []
        for b in range(boxes):
            bw = int(rng.integers(band // 3, band // 2))
            bh = int(rng.integers(h // 4, h // 2))
            x = b * band + (band - bw) // 2
            y = int(rng.integers(h // 4, h - bh - h // 8))
            rects.append([x, y, bw, bh])
            crowd = int(crowd_every > 0 and ann_id % crowd_every == 0)
            anns.append({"id": ann_id, "bbox": [x, y, bw, bh], "category_id": 1 + b, "iscrowd": crowd,
                         "area": bw * bh})
            ann_id += 1
        ext = "jpg" if fmt == "JPEG" else "png"
        image_id = i + 1
        out.append({
            "key": f"{image_id:012d}", "ext": ext, "image": encode(rect_image(w, h, rects, two_tone), fmt),
            "meta": {"image_id": image_id, "file_name": f"{image_id:012d}.{ext}", "width": w, "height": h,
                     "annotations": anns},
        })
    return out


CORRUPT_GOOD_IDS = {1, 3, 5, 6}  # the image ids of corrupt_samples() that are fine


def corrupt_samples() -> list[dict]:
    """Six two-box images; image 2 is not a JPEG although it says so, image 4 has broken JSON."""
    samples = rect_samples(6, boxes=2)
    samples[1]["image"] = b"\xff\xd8\xff\xe0 this is not a jpeg" * 3
    samples[1]["ext"] = "jpg"
    samples[3]["meta"] = b"{not json"
    return samples


def write_coco_folder(root: Path, samples: list[dict]) -> Path:
    """The samples as a COCO folder (annotations.json + images/)."""
    (root / "images").mkdir(parents=True)
    images, anns = [], []
    for s in samples:
        (root / "images" / s["meta"]["file_name"]).write_bytes(s["image"])
        m = s["meta"]
        images.append({k: m[k] for k in ("file_name", "width", "height")} | {"id": m["image_id"]})
        anns += [a | {"image_id": m["image_id"]} for a in m["annotations"]]
    coco = {"images": images, "annotations": anns,
            "categories": [{"id": i, "name": f"c{i}"} for i in range(1, 5)]}
    (root / "annotations.json").write_text(json.dumps(coco))
    return root


def cfg_for(urls: list[str], **data_kw) -> TrainConfig:
    """A tiny training config over ``urls`` (exact epochs, no augmentation unless asked)."""
    data = dict(train_shards=urls, boxes_per_image=2, min_box_size=2.0, shuffle_buffer=8, workers=0,
                hflip=False, color_jitter=0.0, resampled=False)
    data.update(data_kw)
    return TrainConfig(model=ModelConfig(input_size=32, context=1.4), data=DataConfig(**data), batch_size=4)


def measured_edges(crop: torch.Tensor, thr: float = 90.0) -> np.ndarray | None:
    """(left, top, right, bottom) of the bright region of a uint8 (3,S,S) crop, in input px."""
    g = crop.float().mean(0).numpy()
    cols = np.flatnonzero(g.max(0) > thr)
    rows = np.flatnonzero(g.max(1) > thr)
    if len(cols) == 0 or len(rows) == 0:
        return None
    return np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], dtype=np.float64)
