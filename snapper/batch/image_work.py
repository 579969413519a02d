"""Per-image work, done in DataLoader workers: the checks that need an image's size or file,
one decode per image (at the coarsest JPEG scale its crops allow), and cutting every crop of
the image with :class:`snapper.crop.CropGeometry` (the fast CPU kernel).

Nothing here raises for a bad image or box: each problem comes back as kept rows with the
reason, so one broken file never stops a chunk.
"""

from __future__ import annotations

import multiprocessing
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Iterator

import numpy as np
import torch

from snapper.batch.rough import Chunk, RoughInput, finite_box, is_int, rough_numbers
from snapper.batch.schema import AccountingError, make_row
from snapper.config import BatchConfig
from snapper.crop import CropGeometry, to_uint8
from snapper.data.coco import short
from snapper.geometry import clip_boxes, xywh_to_xyxy
from snapper.imageio import ImageError, ImageTooLarge, image_size, load_image

Box = tuple[int, list[float]]  # (annotation id, finite rough xywh)
MAX_SIDE = 1 << 31  # px; a JSON width/height beyond this is no image's size
BOX_DETAILS = {"out_of_range": "a bbox number is too large for a 64-bit float"}


@dataclass
class ImageJob:
    """Everything a worker needs for one image (picklable)."""

    image_id: int
    path: str | None
    json_size: tuple[int, int] | None
    boxes: list[Box]  # still to be snapped


def safe_image_path(images_dir: str, file_name: Any) -> Path | None:
    """``images_dir/file_name``, or None for a missing name, one no file system accepts (a NUL
    byte) or one that leaves the folder."""
    if not isinstance(file_name, str) or not file_name or "\0" in file_name:
        return None
    rel = PurePosixPath(file_name.replace("\\", "/"))
    if rel.is_absolute() or ".." in rel.parts:
        return None
    return Path(images_dir) / Path(*rel.parts)


def leaves_folder(images_dir: str, path: Path) -> bool:
    """Whether ``path`` (inside ``images_dir`` by name) resolves outside it through a symbolic
    link: such a file is not read unless ``BatchConfig.follow_links`` allows it."""
    try:
        return not Path(os.path.realpath(path)).is_relative_to(os.path.realpath(images_dir))
    except (OSError, ValueError):
        return False  # an unusable path: found missing or unreadable when it is opened


def _box_reason(a: dict[str, Any]) -> tuple[str | None, np.ndarray | None]:
    reason, b = finite_box(a.get("bbox"))
    if reason is None and a.get("iscrowd") not in (None, 0, False):
        reason = "crowd"
    if reason is None and (b[2] <= 0 or b[3] <= 0):
        reason = "degenerate"
    return reason, b


def _json_size(im: dict[str, Any]) -> tuple[tuple[int, int] | None, str | None]:
    """(the JSON's width/height when given as positive integers, a problem with them)."""
    w, h = im.get("width"), im.get("height")
    if not (is_int(w) and is_int(h) and w > 0 and h > 0):
        return None, None
    if max(w, h) >= MAX_SIDE:
        return None, f"JSON says {short(w)}x{short(h)}, beyond any image's size"
    return (w, h), None


def chunk_jobs(inp: RoughInput, chunk: Chunk, follow_links: bool = False) -> tuple[list[ImageJob], list[dict[str, Any]]]:
    """Box-only checks (no pixels needed), then one job per image with boxes left to snap."""
    jobs, kept = [], []
    for image_id in chunk.image_ids:
        im = inp.images.get(image_id)
        if im is None:
            raise AccountingError(f"{inp.path}: chunk {chunk.index} names image {image_id}, which the file does not have")
        boxes = []
        for pos in inp.anns_by_image.get(image_id, []):
            a = inp.annotations[pos]
            reason, b = _box_reason(a)
            if reason is not None:
                kept.append(make_row(a["id"], image_id, reason, rough_numbers(a.get("bbox")), BOX_DETAILS.get(reason)))
            else:
                boxes.append((a["id"], b.tolist()))
        if not boxes:
            continue
        size, problem = _json_size(im)
        if problem is not None:
            kept += [make_row(a, image_id, "image_size_mismatch", b, problem) for a, b in boxes]
            continue
        path = safe_image_path(chunk.images_dir, im.get("file_name"))
        if path is not None and not follow_links and leaves_folder(chunk.images_dir, path):
            kept += [make_row(a, image_id, "outside_images_dir", b, f"{path} is a link to "
                              f"{os.path.realpath(path)}, outside the images folder (--follow-links reads it)")
                     for a, b in boxes]
            continue
        jobs.append(ImageJob(image_id, None if path is None else str(path), size, boxes))
    return jobs, kept


def size_checks(boxes: list[Box], w: float, h: float, min_size: float,
                image_id: int) -> tuple[list[dict[str, Any]], list[Box], np.ndarray]:
    """Split boxes into kept rows (outside_image / too_small) and the ones to snap, with the
    latter as xyxy clipped to the image (N, 4): converted once here, and carried to the crops
    and to the movement measured against the rough box."""
    kept, ok, rows = [], [], []
    clipped = clip_boxes(xywh_to_xyxy(np.array([b for _, b in boxes], dtype=np.float64).reshape(-1, 4)), w, h)
    for (ann_id, b), c in zip(boxes, clipped):
        x, y, bw, bh = b
        if x >= w or y >= h or x + bw <= 0 or y + bh <= 0:
            kept.append(make_row(ann_id, image_id, "outside_image", b, size=(w, h)))
            continue
        if c[2] - c[0] < min_size or c[3] - c[1] < min_size:
            kept.append(make_row(ann_id, image_id, "too_small", b,
                                 detail=f"{c[2] - c[0]:.2f}x{c[3] - c[1]:.2f} px after clipping < {min_size}",
                                 size=(w, h)))
            continue
        ok.append((ann_id, b))
        rows.append(c)
    return kept, ok, np.array(rows, dtype=np.float64).reshape(-1, 4)


class ImageCrops(torch.utils.data.Dataset):
    """Decode one image (once, at the coarsest usable JPEG scale) and cut all its crops.

    An item is ``{"image_id", "kept": [rows], "ann_ids", "rough": [xywh as given], "rough_xyxy":
    (N, 4) clipped to the image | None, "crops": uint8 (N, 3, S, S) | None, "geometry":
    CropGeometry | None, "size": (w, h) | None}``, plus ``"source"``: (decoded image, its
    scale) for a second pass (``cfg.snap.passes == 2``).
    Never raises for a bad image: the image's boxes come back as kept rows with the reason.
    """

    def __init__(self, jobs: list[ImageJob], input_size: int, context: float, cfg: BatchConfig):
        self.jobs, self.size, self.context, self.cfg = jobs, input_size, context, cfg

    def __len__(self) -> int:
        return len(self.jobs)

    def __getitem__(self, i: int) -> dict[str, Any]:
        job = self.jobs[i]
        out: dict[str, Any] = {"image_id": job.image_id, "kept": [], "ann_ids": [], "rough": [],
                               "rough_xyxy": None, "crops": None, "geometry": None, "size": None}
        boxes, rough = job.boxes, None
        if job.json_size is not None:
            boxes, rough = self._check_sizes(out, boxes, job.json_size)
        if not boxes:
            return out
        if job.path is None:
            return self._keep_all(out, boxes, "image_path_invalid", "no file_name, or one outside the images folder")
        if not os.path.isfile(job.path):
            return self._keep_all(out, boxes, "image_missing", f"{job.path}: no such file")
        return self._cut(out, job, boxes, rough)

    def _keep_all(self, out: dict[str, Any], boxes: list[Box], reason: str, detail: str | None,
                  size: tuple[float, float] | None = None) -> dict[str, Any]:
        out["kept"] += [make_row(a, out["image_id"], reason, b, detail, size) for a, b in boxes]
        return out

    def _check_sizes(self, out: dict[str, Any], boxes: list[Box],
                     size: tuple[float, float]) -> tuple[list[Box], np.ndarray]:
        kept, boxes, rough = size_checks(boxes, *size, self.cfg.min_box_size, out["image_id"])
        out["kept"] += kept
        return boxes, rough

    def _cut(self, out: dict[str, Any], job: ImageJob, boxes: list[Box], rough: np.ndarray | None) -> dict[str, Any]:
        """Decode once and cut every crop. Only problems of the image itself become kept rows;
        anything else (a bug, a setting) raises and fails the chunk instead of every box."""
        try:
            w, h = job.json_size if job.json_size is not None else image_size(job.path)
        except ImageTooLarge as e:  # PIL's bomb guard, from the header alone
            return self._keep_all(out, boxes, "image_too_large", str(e))
        except (ImageError, OSError) as e:
            return self._keep_all(out, boxes, "image_corrupt", str(e))
        if job.json_size is None:
            boxes, rough = self._check_sizes(out, boxes, (w, h))
            if not boxes:
                return out
        geo = CropGeometry.around(rough, self.size, self.context, self.cfg.snap.buffer_ratio)
        try:
            # a second pass reads ~1 original px per input px: full resolution for it
            draft = self.cfg.draft_decode and self.cfg.snap.passes == 1
            image = load_image(job.path, min_scale=geo.decode_scale() if draft else 1.0,
                               max_pixels=self.cfg.max_pixels)
        except ImageTooLarge as e:
            return self._keep_all(out, boxes, "image_too_large", str(e), (w, h))
        except (ImageError, OSError) as e:
            return self._keep_all(out, boxes, "image_corrupt", str(e))
        if (image.width, image.height) != (w, h):
            return self._keep_all(out, boxes, "image_size_mismatch",
                                  f"JSON says {w}x{h}, the file is {image.width}x{image.height}", (w, h))
        out.update(ann_ids=[a for a, _ in boxes], rough=[b for _, b in boxes], rough_xyxy=rough, geometry=geo,
                   size=(w, h), crops=to_uint8(geo.cut(image.tensor, image.scale)))
        if self.cfg.snap.passes == 2:
            out["source"] = (image.tensor, image.scale)
        return out


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # parallelism comes from the workers; the main process owns the cores for the model


def _identity(x: Any) -> Any:
    return x


def iter_image_crops(jobs: list[ImageJob], input_size: int, context: float, cfg: BatchConfig) -> Iterator[dict[str, Any]]:
    """Decoded-and-cropped images in order, prefetched by ``cfg.workers`` processes."""
    ds = ImageCrops(jobs, input_size, context, cfg)
    workers = max(0, min(int(cfg.workers), len(jobs)))
    if multiprocessing.current_process().daemon:
        workers = 0  # e.g. inside a Dask worker process: daemons may not start children
    kw: dict[str, Any] = {}
    if workers:
        kw = {"prefetch_factor": max(1, int(cfg.prefetch_factor)), "worker_init_fn": _worker_init}
    loader = torch.utils.data.DataLoader(ds, batch_size=None, shuffle=False, num_workers=workers,
                                         collate_fn=_identity, pin_memory=False, **kw)
    yield from loader
