"""Batch snapping of crowd-sourced rough annotations, with full accounting.

Input: a COCO instances JSON whose ``bbox`` fields are rough boxes, plus the images folder
(``snapper batch-snap`` also takes a folder of such JSONs: each is snapped on its own into
``OUT_DIR/<stem>/``, since annotation ids of different files may collide).

Output, in ``out_dir``:

* ``snapped.json``: the input COCO file with every top-level field, image, category and
  annotation kept, in the same order, each annotation with all of its fields. For a
  *snapped* annotation ``bbox`` is the snapped box; ``area`` is kept when the annotation has
  a non-empty ``segmentation`` (COCO's area is the mask area, which a box does not change),
  else it is set to the new ``w * h``. Every annotation gains a ``"snapper"`` object::

      {"status": "snapped" | "kept", "reason": null | "crowd" | ..., "detail": null | str,
       "rough_bbox": [x, y, w, h] (the input bbox as given) | null,
       "confidence": {"left", "top", "right", "bottom"} | null,
       "needs_review": bool, "review": [reasons], "moved_px": float | null,
       "moved_frac": float | null, "iou_with_rough": float | null}

  A *kept* annotation is byte-for-byte the input one (its ``bbox`` unchanged, non-finite
  numbers written back as Python's ``NaN``/``Infinity``, which ``json`` and pycocotools read)
  plus that object. Kept reasons, the first that applies in this order: ``missing_bbox``,
  ``malformed_bbox`` (not a list of 4 numbers), ``non_finite``, ``crowd`` (``iscrowd`` set),
  ``degenerate`` (w or h <= 0), ``unknown_image`` (no such image entry), ``outside_image``,
  ``too_small`` (w or h below ``min_box_size`` after clipping to the image),
  ``image_path_invalid`` (no ``file_name``, or one that leaves the images folder),
  ``image_missing``, ``image_corrupt``, ``image_size_mismatch`` (the JSON's width/height differ
  from the file's: the boxes' frame is then unknown), ``snap_failed`` (non-finite model
  output). ``needs_review`` is set when any edge confidence is below ``review_threshold``
  (``low_confidence``), when an edge moved more than ``review_moved_frac`` of the rough box's
  extent on its axis (``moved``), and for every kept box except crowd ones (``kept``).
* Multiple rough boxes per object (crowd-sourcing): annotations that carry the same
  ``object_id`` (``BatchConfig.fuse_key``) on the same image are several workers' boxes of one
  object. The output then has a top-level list ``"snapper_fused"`` with one entry per object:
  ``object_id, image_id, category_id`` (majority), ``annotation_ids``, ``n_snapped``, ``bbox``
  (edge-wise confidence-weighted mean of the snapped members' edges, kept >= 1 px like every
  snapped box; null when none was snapped), ``confidence`` (members' mean per edge), ``spread_px`` (weighted std per edge),
  ``needs_review``. The per-annotation boxes are not replaced by the fused one.
* ``boxes.parquet``: one row per input annotation (status, reason, rough/snapped xywh,
  confidence, movement, review flags); ``summary.json``: counts per status and reason,
  confidence quantiles, movement quantiles, throughput and, with ``truth``, the paper's
  Table 1 for the input and the output boxes (also ``table1.csv``); ``review.csv``: the
  review list.

Throughput: each image is decoded once for all its boxes, at the coarsest JPEG DCT scale its
crops allow; DataLoader workers decode and crop, and the main process runs the model on
batches of ``batch_size`` crops gathered across images.

Scaling and resume: :func:`plan_chunks` splits the images into chunks deterministically,
:func:`snap_chunk` writes one chunk's results atomically (an existing result is reused, so
a killed run resumes), :func:`merge_chunks` checks that every input annotation id comes out
exactly once and writes the outputs atomically. :func:`batch_snap` runs the three in-process;
``flows/batch_snap.py`` fans the chunks out over a Prefect task runner.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import math
import multiprocessing
import os
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Iterable, Iterator

import numpy as np
import pandas as pd
import torch

from snapper.atomic import atomic_write_text
from snapper.registry import resolve_model
from snapper.checkpoint import CONFIG_FILE, MODEL_FILE
from snapper.config import BatchConfig, apply_overrides, to_dict
from snapper.crop import CropGeometry, crop_images, crop_windows
from snapper.data.coco import structure_problem
from snapper.data.shards import sha256_file
from snapper.geometry import EDGE_NAMES, clip_boxes, paired_iou, xywh_to_xyxy, xyxy_to_xywh
from snapper.imageio import ImageError, image_size, load_image
from snapper.crop import tidy_boxes

SNAPPED, KEPT = "snapped", "kept"
# Kept reasons in the order they are checked (the first that applies is reported).
REASONS = (
    "missing_bbox", "malformed_bbox", "non_finite", "crowd", "degenerate", "unknown_image",
    "outside_image", "too_small", "image_path_invalid", "image_missing", "image_corrupt",
    "image_size_mismatch", "snap_failed",
)
CONF_COLS = [f"conf_{e}" for e in EDGE_NAMES]
ROUGH_COLS = ["rough_x", "rough_y", "rough_w", "rough_h"]
PRED_COLS = ["pred_x", "pred_y", "pred_w", "pred_h"]
OUTPUT_JSON = "snapped.json"
BOXES_PARQUET = "boxes.parquet"
SUMMARY_JSON = "summary.json"
REVIEW_CSV = "review.csv"
CHUNKS_DIR = "chunks"
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


class BatchInputError(ValueError):
    """The rough-annotation file cannot be used as a whole; the message names the file."""


class AccountingError(RuntimeError):
    """Chunk results do not account for every input annotation exactly once."""


# ------------------------------------------------------------------------------ the input


@dataclass
class RoughInput:
    """A parsed rough-annotation file: the raw JSON (kept for the output) plus indexes."""

    path: str
    sha256: str
    data: dict[str, Any]
    images: dict[int, dict[str, Any]]  # image id -> image entry
    image_order: list[int]  # image ids in file order
    anns_by_image: dict[int, list[int]]  # image id -> annotation positions (file order)
    orphans: list[int]  # positions of annotations whose image is unknown / unnamed

    @property
    def annotations(self) -> list[dict[str, Any]]:
        return self.data["annotations"]

    @property
    def annotation_ids(self) -> list[int]:
        return [a["id"] for a in self.annotations]


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def parse_rough(path: str | os.PathLike[str], raw: bytes | None = None) -> RoughInput:
    """Parse and check a rough COCO file.

    Fatal (:class:`BatchInputError`): not JSON, not an object, ``images``/``annotations``
    missing or not lists, an entry that is not an object, a missing/non-integer/duplicated
    ``id``. Everything else about an annotation (its box, its image) is a per-annotation
    reason decided later, because one bad box must not stop the other boxes.
    """
    name = str(path)
    if raw is None:
        try:
            raw = Path(path).read_bytes()
        except OSError as e:
            raise BatchInputError(f"{name}: cannot read ({e})") from e
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BatchInputError(f"{name}: not valid JSON ({e})") from e
    problem = structure_problem(data)
    if problem:
        raise BatchInputError(f"{name}: {problem}")
    images: dict[int, dict[str, Any]] = {}
    order: list[int] = []
    for i, im in enumerate(data["images"]):
        if not isinstance(im, dict) or not _is_int(im.get("id")):
            raise BatchInputError(f"{name}: images[{i}] must be an object with an integer 'id', got {str(im)[:80]}")
        if im["id"] in images:
            raise BatchInputError(f"{name}: duplicate image id {im['id']} (images[{i}])")
        images[im["id"]] = im
        order.append(im["id"])
    seen: set[int] = set()
    by_image: dict[int, list[int]] = defaultdict(list)
    orphans: list[int] = []
    for i, a in enumerate(data["annotations"]):
        if not isinstance(a, dict) or not _is_int(a.get("id")):
            raise BatchInputError(f"{name}: annotations[{i}] must be an object with an integer 'id', got {str(a)[:80]}")
        if a["id"] in seen:
            raise BatchInputError(f"{name}: duplicate annotation id {a['id']} (annotations[{i}]); "
                                  "results are accounted by id, so ids must be unique")
        seen.add(a["id"])
        image_id = a.get("image_id")
        if _is_int(image_id) and image_id in images:
            by_image[image_id].append(i)
        else:
            orphans.append(i)
    return RoughInput(name, hashlib.sha256(raw).hexdigest(), data, images, order, dict(by_image), orphans)


_INPUT_LOCK = threading.Lock()


@functools.lru_cache(maxsize=4)
def _cached_input(path: str, mtime_ns: int, size: int) -> RoughInput:
    return parse_rough(path)


def load_rough(path: str | os.PathLike[str]) -> RoughInput:
    """:func:`parse_rough`, parsed once per process per file version (chunks share it)."""
    p = Path(path)
    try:
        st = p.stat()
    except OSError as e:
        raise BatchInputError(f"{p}: cannot read ({e})") from e
    with _INPUT_LOCK:
        return _cached_input(str(p.resolve()), st.st_mtime_ns, st.st_size)


# ----------------------------------------------------------------------------- chunk plan


@dataclass(frozen=True)
class Chunk:
    """A deterministic slice of the input's images; plain JSON so Prefect tasks can pass it."""

    index: int
    ann_file: str
    images_dir: str
    input_sha256: str
    image_ids: tuple[int, ...]
    n_annotations: int

    @property
    def key(self) -> str:
        h = hashlib.sha256(json.dumps([self.input_sha256, self.images_dir, list(self.image_ids)]).encode())
        return h.hexdigest()[:12]

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "ann_file": self.ann_file, "images_dir": self.images_dir,
                "input_sha256": self.input_sha256, "image_ids": list(self.image_ids),
                "n_annotations": self.n_annotations}

    @classmethod
    def from_dict(cls, d: "dict[str, Any] | Chunk") -> "Chunk":
        if isinstance(d, Chunk):
            return d
        return cls(int(d["index"]), str(d["ann_file"]), str(d["images_dir"]), str(d["input_sha256"]),
                   tuple(int(i) for i in d["image_ids"]), int(d["n_annotations"]))


def plan_chunks(
    ann_file: str | os.PathLike[str],
    images_dir: str | os.PathLike[str],
    chunk_images: int | None = None,
) -> list[Chunk]:
    """Split the images that have annotations into chunks of ``chunk_images`` (file order).

    Same file, same folder, same size => same chunks, which is what makes resume work.
    Annotations of unknown images are in no chunk; :func:`merge_chunks` accounts for them.
    """
    n = BatchConfig().chunk_images if chunk_images is None else int(chunk_images)
    if n < 1:
        raise ValueError(f"chunk_images must be >= 1, got {n}")
    inp = load_rough(ann_file)
    ids = [i for i in inp.image_order if inp.anns_by_image.get(i)]
    ann_file_s = str(Path(ann_file).resolve())
    images_dir_s = str(Path(images_dir).resolve())
    return [
        Chunk(k, ann_file_s, images_dir_s, inp.sha256, tuple(ids[s : s + n]),
              sum(len(inp.anns_by_image[i]) for i in ids[s : s + n]))
        for k, s in enumerate(range(0, len(ids), n))
    ]


# ------------------------------------------------------------------------------- the model


def resolve_checkpoint(model_ref: str | os.PathLike[str]) -> Path:
    """See :func:`snapper.registry.resolve_model`."""
    return resolve_model(model_ref)


@functools.lru_cache(maxsize=8)
def _model_fingerprint(path: str, mtime_ns: int, size: int) -> str:
    p = Path(path)
    return hashlib.sha256((sha256_file(p / MODEL_FILE) + sha256_file(p / CONFIG_FILE)).encode()).hexdigest()[:12]


def model_fingerprint(ckpt: str | os.PathLike[str]) -> str:
    """Content hash of a checkpoint: a chunk result is reused only for the same weights."""
    p = Path(ckpt).resolve()
    st = (p / MODEL_FILE).stat()
    return _model_fingerprint(str(p), st.st_mtime_ns, st.st_size)


_SNAPPERS: dict[tuple[str, str, str, int], Any] = {}
_SNAPPERS_LOCK = threading.Lock()


def get_snapper(ckpt: str | os.PathLike[str], device: str = "auto", batch_size: int = 128,
                precision: str = "auto") -> Any:
    """One loaded model per (checkpoint, device, precision) per process: chunks run in threads
    share it (inference in eval mode does not mutate the module)."""
    from snapper.snap import Snapper

    key = (str(Path(ckpt).resolve()), device, model_fingerprint(ckpt), int(batch_size), precision)
    with _SNAPPERS_LOCK:
        s = _SNAPPERS.get(key)
        if s is None:
            s = _SNAPPERS[key] = Snapper.from_checkpoint(ckpt, device=device, batch_size=batch_size,
                                                         precision=precision)
    return s


# ------------------------------------------------------------------- per-image work (workers)


def _finite_box(bbox: Any) -> tuple[str | None, np.ndarray | None]:
    """(reason, xywh) for the box-only checks that need no image."""
    if bbox is None:
        return "missing_bbox", None
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
        return "malformed_bbox", None
    if any(v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))) for v in bbox):
        return "malformed_bbox", None
    b = np.array([np.nan if v is None else float(v) for v in bbox], dtype=np.float64)
    if not np.isfinite(b).all():
        return "non_finite", b
    return None, b


def _rough_numbers(bbox: Any) -> list[float]:
    """The input bbox as 4 floats for the table (NaN where it has no number)."""
    if isinstance(bbox, (list, tuple)) and len(bbox) == 4:
        return [float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan for v in bbox]
    return [math.nan] * 4


def _safe_image_path(images_dir: str, file_name: Any) -> Path | None:
    if not isinstance(file_name, str) or not file_name:
        return None
    rel = PurePosixPath(file_name.replace("\\", "/"))
    if rel.is_absolute() or ".." in rel.parts:
        return None
    return Path(images_dir) / Path(*rel.parts)


@dataclass
class _ImageJob:
    """Everything a worker needs for one image (picklable)."""

    image_id: int
    path: str | None
    json_size: tuple[int, int] | None
    boxes: list[tuple[int, list[float]]]  # (annotation id, finite rough xywh) still to be snapped


def _row(ann_id: int, image_id: int | None, reason: str | None, rough: list[float], detail: str | None = None,
         size: tuple[float, float] | None = None) -> dict[str, Any]:
    r: dict[str, Any] = {"annotation_id": ann_id, "image_id": image_id, "status": KEPT if reason else SNAPPED,
                         "reason": reason, "detail": detail}
    r.update(zip(ROUGH_COLS, rough))
    r["width"], r["height"] = size if size else (math.nan, math.nan)
    return r


def _size_checks(boxes: list[tuple[int, list[float]]], w: float, h: float, min_size: float,
                 image_id: int) -> tuple[list[dict[str, Any]], list[tuple[int, list[float]]]]:
    """Split boxes into kept rows (outside_image / too_small) and the ones to snap."""
    kept, ok = [], []
    for ann_id, b in boxes:
        x, y, bw, bh = b
        if x >= w or y >= h or x + bw <= 0 or y + bh <= 0:
            kept.append(_row(ann_id, image_id, "outside_image", b, size=(w, h)))
            continue
        c = clip_boxes(xywh_to_xyxy(np.array(b)), w, h)[0]
        if c[2] - c[0] < min_size or c[3] - c[1] < min_size:
            kept.append(_row(ann_id, image_id, "too_small", b,
                             detail=f"{c[2] - c[0]:.2f}x{c[3] - c[1]:.2f} px after clipping < {min_size}", size=(w, h)))
            continue
        ok.append((ann_id, b))
    return kept, ok


class _ImageCrops(torch.utils.data.Dataset):
    """Decode one image (once, at the coarsest usable JPEG scale) and cut all its crops.

    Never raises for a bad image: the image's boxes come back as kept rows with the reason.
    """

    def __init__(self, jobs: list[_ImageJob], input_size: int, context: float, cfg: BatchConfig):
        self.jobs, self.size, self.context, self.cfg = jobs, input_size, context, cfg

    def __len__(self) -> int:
        return len(self.jobs)

    def __getitem__(self, i: int) -> dict[str, Any]:
        job, cfg = self.jobs[i], self.cfg
        out: dict[str, Any] = {"image_id": job.image_id, "kept": [], "ann_ids": [], "rough": [],
                               "crops": None, "windows": None, "size": None}

        def keep_all(boxes: list[tuple[int, list[float]]], reason: str, detail: str | None,
                     size: tuple[float, float] | None = None) -> dict[str, Any]:
            out["kept"] += [_row(a, job.image_id, reason, b, detail, size) for a, b in boxes]
            return out

        boxes = job.boxes
        if job.json_size is not None:
            kept, boxes = _size_checks(boxes, *job.json_size, cfg.min_box_size, job.image_id)
            out["kept"] += kept
        if not boxes:
            return out
        if job.path is None:
            return keep_all(boxes, "image_path_invalid", "no file_name, or one outside the images folder")
        if not os.path.isfile(job.path):
            return keep_all(boxes, "image_missing", f"{job.path}: no such file")
        try:
            w, h = job.json_size if job.json_size is not None else image_size(job.path)
            if job.json_size is None:
                kept, boxes = _size_checks(boxes, w, h, cfg.min_box_size, job.image_id)
                out["kept"] += kept
                if not boxes:
                    return out
            rough = clip_boxes(xywh_to_xyxy(np.array([b for _, b in boxes])), w, h)
            win = crop_windows(rough, cfg.buffer_ratio, self.context)
            need = float(np.max(self.size / np.maximum(np.stack([win[:, 2] - win[:, 0], win[:, 3] - win[:, 1]], 1), 1e-9)))
            image = load_image(job.path, min_scale=min(1.0, need) if cfg.draft_decode else 1.0)
        except (ImageError, OSError, ValueError) as e:
            return keep_all(boxes, "image_corrupt", str(e))
        if (image.width, image.height) != (w, h):
            return keep_all(boxes, "image_size_mismatch",
                            f"JSON says {w}x{h}, the file is {image.width}x{image.height}", (w, h))
        crops = crop_images(image.tensor, win, self.size, image.scale)
        out.update(ann_ids=[a for a, _ in boxes], rough=[b for _, b in boxes], windows=win, size=(w, h),
                   crops=crops.round_().clamp_(0, 255).to(torch.uint8))
        return out


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # parallelism comes from the workers; the main process owns the cores for the model


class _Batcher:
    """Gathers crops across images into full batches for the model; emits rows per image
    once all of its crops are predicted."""

    def __init__(self, snapper: Any, batch_size: int):
        self.snapper, self.bs = snapper, batch_size
        self.items: list[dict[str, Any]] = []
        self.queue: list[tuple[int, torch.Tensor]] = []  # (item index, crops) not yet run
        self.queued = 0
        self.rows: list[dict[str, Any]] = []
        self.forward_s = 0.0

    def add(self, item: dict[str, Any]) -> None:
        self.rows += item["kept"]
        if item["crops"] is None or not len(item["crops"]):
            return
        n = len(item["crops"])
        item["pos"], item["conf"], item["done"] = np.zeros((n, 4)), np.zeros((n, 4)), 0
        self.items.append(item)
        self.queue.append((len(self.items) - 1, item["crops"]))
        self.queued += n
        while self.queued >= self.bs:
            self._run(self.bs)

    def finish(self) -> list[dict[str, Any]]:
        while self.queued:
            self._run(min(self.bs, self.queued))
        return self.rows

    def _run(self, n: int) -> None:
        parts, owners, taken = [], [], 0
        while taken < n:
            idx, crops = self.queue[0]
            item = self.items[idx]
            k = min(n - taken, len(crops))
            start = len(item["crops"]) - len(crops)
            parts.append(crops[:k])
            owners.append((idx, start, k))
            taken += k
            if k == len(crops):
                self.queue.pop(0)
            else:
                self.queue[0] = (idx, crops[k:])
        batch = torch.cat(parts) if len(parts) > 1 else parts[0]
        windows = np.concatenate([self.items[idx]["windows"][start : start + k] for idx, start, k in owners])
        if self.snapper.device.type == "cuda":
            batch = batch.pin_memory()
        t = time.perf_counter()
        pos, conf = self.snapper.predict_crops(batch, CropGeometry(windows, self.snapper.cfg.input_size))
        self.forward_s += time.perf_counter() - t
        self.queued -= n
        off = 0
        for idx, start, k in owners:
            item = self.items[idx]
            item["pos"][start : start + k], item["conf"][start : start + k] = pos[off : off + k], conf[off : off + k]
            item["done"] += k
            off += k
            if item["done"] == len(item["crops"]):
                self._emit(item)
                self.items[idx] = {}  # free the crops

    def _emit(self, item: dict[str, Any]) -> None:
        w, h = item["size"]
        snapped = CropGeometry(item["windows"], self.snapper.cfg.input_size).to_original(item["pos"], w, h)
        rough_c = clip_boxes(xywh_to_xyxy(np.array(item["rough"])), w, h)
        iou = paired_iou(snapped, rough_c)
        delta = np.abs(snapped - rough_c)
        extent = np.maximum(rough_c[:, [2, 3, 2, 3]] - rough_c[:, [0, 1, 0, 1]], 1e-9)
        xywh = xyxy_to_xywh(snapped)
        for j, ann_id in enumerate(item["ann_ids"]):
            ok = np.isfinite(snapped[j]).all()
            r = _row(ann_id, item["image_id"], None if ok else "snap_failed", item["rough"][j],
                     None if ok else "non-finite model output", (w, h))
            if ok:
                r.update(zip(PRED_COLS, xywh[j].tolist()))
                r["moved_px"] = float(delta[j].max())
                r["moved_frac"] = float((delta[j] / extent[j]).max())
                r["iou_with_rough"] = float(iou[j])
            r.update(zip(CONF_COLS, item["conf"][j].tolist()))
            self.rows.append(r)


def _chunk_jobs(inp: RoughInput, chunk: Chunk) -> tuple[list[_ImageJob], list[dict[str, Any]]]:
    """Box-only checks (no pixels needed), then one job per image with boxes left to snap."""
    jobs, kept = [], []
    for image_id in chunk.image_ids:
        im = inp.images.get(image_id)
        if im is None:
            raise AccountingError(f"{inp.path}: chunk {chunk.index} names image {image_id}, which the file does not have")
        boxes = []
        for pos in inp.anns_by_image.get(image_id, []):
            a = inp.annotations[pos]
            reason, b = _finite_box(a.get("bbox"))
            if reason is None and a.get("iscrowd") not in (None, 0, False):
                reason = "crowd"
            if reason is None and (b[2] <= 0 or b[3] <= 0):
                reason = "degenerate"
            if reason is not None:
                kept.append(_row(a["id"], image_id, reason, _rough_numbers(a.get("bbox"))))
            else:
                boxes.append((a["id"], b.tolist()))
        if not boxes:
            continue
        w, h = im.get("width"), im.get("height")
        size = (w, h) if _is_int(w) and _is_int(h) and w > 0 and h > 0 else None
        path = _safe_image_path(chunk.images_dir, im.get("file_name"))
        jobs.append(_ImageJob(image_id, None if path is None else str(path), size, boxes))
    return jobs, kept


_ROW_COLUMNS = ["annotation_id", "image_id", "status", "reason", "detail", *ROUGH_COLS, *PRED_COLS, *CONF_COLS,
                "moved_px", "moved_frac", "iou_with_rough", "width", "height"]


def _rows_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=_ROW_COLUMNS)
    df["annotation_id"] = df["annotation_id"].astype("int64")
    df["image_id"] = pd.array(df["image_id"].tolist(), dtype="Int64")
    for c in ("status", "reason", "detail"):
        df[c] = df[c].astype(object).where(df[c].notna(), None)
    for c in _ROW_COLUMNS[5:]:
        df[c] = df[c].astype("float64")
    return df


def chunk_result_path(chunk: Chunk, out_dir: str | os.PathLike[str], model_fp: str, cfg: BatchConfig) -> Path:
    """Where a chunk's result lives; the name changes with anything that changes the result
    (input file, images folder, images, weights, buffer ratio, size limit, decode scale)."""
    h = hashlib.sha256(json.dumps([chunk.key, model_fp, cfg.buffer_ratio, cfg.min_box_size, cfg.draft_decode,
                                  cfg.precision]).encode())
    return Path(out_dir) / CHUNKS_DIR / f"chunk-{chunk.index:05d}-{h.hexdigest()[:12]}.parquet"


def _atomic_parquet(df: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        df.to_parquet(tmp, index=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def snap_chunk(
    chunk: "Chunk | dict[str, Any]",
    model_ref: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    cfg: BatchConfig | None = None,
) -> Path:
    """Snap one chunk and write its per-annotation rows atomically; returns the result path.

    A result that already exists (same input, images, weights and settings) is reused: this
    is how a killed run resumes without recomputing finished chunks.
    """
    chunk = Chunk.from_dict(chunk)
    cfg = cfg or BatchConfig()
    ckpt = resolve_checkpoint(model_ref)
    out = chunk_result_path(chunk, out_dir, model_fingerprint(ckpt), cfg)
    if out.is_file():
        return out
    inp = load_rough(chunk.ann_file)
    if inp.sha256 != chunk.input_sha256:
        raise BatchInputError(f"{chunk.ann_file}: the file changed since the chunks were planned; plan again")
    jobs, kept = _chunk_jobs(inp, chunk)
    snapper = get_snapper(ckpt, cfg.device, cfg.batch_size, cfg.precision)
    batcher = _Batcher(snapper, cfg.batch_size)
    batcher.rows += kept
    for item in iter_image_crops(jobs, snapper.cfg.input_size, snapper.cfg.context, cfg, snapper.device.type == "cuda"):
        batcher.add(item)
    rows = batcher.finish()
    df = _rows_frame(rows)
    expected = sum(len(inp.anns_by_image[i]) for i in chunk.image_ids)
    if len(df) != expected or df["annotation_id"].duplicated().any():
        raise AccountingError(f"{chunk.ann_file}: chunk {chunk.index} produced {len(df)} rows for {expected} annotations")
    _atomic_parquet(df, out)
    return out


def iter_image_crops(jobs: list[_ImageJob], input_size: int, context: float, cfg: BatchConfig,
                     pin: bool = False) -> Iterator[dict[str, Any]]:
    """Decoded-and-cropped images in order, prefetched by ``cfg.workers`` processes."""
    ds = _ImageCrops(jobs, input_size, context, cfg)
    workers = max(0, min(int(cfg.workers), len(jobs)))
    if multiprocessing.current_process().daemon:
        workers = 0  # e.g. inside a Dask worker process: daemons may not start children
    kw: dict[str, Any] = {}
    if workers:
        kw = {"prefetch_factor": max(1, int(cfg.prefetch_factor)), "worker_init_fn": _worker_init}
    loader = torch.utils.data.DataLoader(ds, batch_size=None, shuffle=False, num_workers=workers,
                                         collate_fn=_identity, pin_memory=False, **kw)
    yield from loader


def _identity(x: Any) -> Any:
    return x


# ----------------------------------------------------------------------------------- merge


def _review(df: pd.DataFrame, cfg: BatchConfig) -> pd.DataFrame:
    conf = df[CONF_COLS].to_numpy(dtype=np.float64)
    snapped = (df["status"] == SNAPPED).to_numpy()
    with np.errstate(invalid="ignore"):
        low = snapped & (conf < cfg.review_threshold).any(axis=1)
        moved = snapped & (df["moved_frac"].to_numpy() > cfg.review_moved_frac)
    kept = (~snapped) & (df["reason"] != "crowd").to_numpy()
    reasons = []
    for lo, mo, ke, c in zip(low, moved, kept, conf):
        r = [f"low_confidence:{e}" for e, v in zip(EDGE_NAMES, c) if lo and v < cfg.review_threshold]
        r += ["moved"] if mo else []
        r += ["kept"] if ke else []
        reasons.append(";".join(r))
    df = df.copy()
    df["needs_review"] = low | moved | kept
    df["review"] = reasons
    return df


def _num(v: Any, digits: int = 4) -> float | None:
    return None if v is None or not np.isfinite(v) else round(float(v), digits)


def _has_segmentation(a: dict[str, Any]) -> bool:
    seg = a.get("segmentation")
    return bool(seg) and (not isinstance(seg, list) or any(seg))


def _fuse(inp: RoughInput, df: pd.DataFrame, cfg: BatchConfig) -> list[dict[str, Any]]:
    """One fused box per (image, object) over the workers' snapped boxes."""
    key = cfg.fuse_key
    if not key:
        return []
    rows = df.set_index("annotation_id")
    groups: dict[tuple[Any, str], list[dict[str, Any]]] = defaultdict(list)
    for a in inp.annotations:
        v = a.get(key)
        if v is None or isinstance(v, (dict, list)):
            continue
        groups[(a.get("image_id"), json.dumps(v))].append(a)
    fused = []
    for (image_id, _), members in groups.items():
        ids = [a["id"] for a in members]
        sub = rows.loc[ids]
        snap = sub[sub["status"] == SNAPPED]
        cats = Counter(a.get("category_id") for a in members)
        top = max(cats.values())
        entry: dict[str, Any] = {
            "object_id": members[0][key], "image_id": image_id,
            "category_id": min((c for c, n in cats.items() if n == top), key=lambda c: (str(type(c)), c)),
            "annotation_ids": ids, "n_snapped": int(len(snap)), "bbox": None, "area": None, "iscrowd": 0,
            "confidence": None, "spread_px": None, "needs_review": True,
        }
        if len(snap):
            xywh = snap[PRED_COLS].to_numpy(dtype=np.float64)
            edges = xywh_to_xyxy(xywh)
            conf = snap[CONF_COLS].to_numpy(dtype=np.float64)
            wts = np.where(np.isfinite(conf), np.clip(conf, 1e-6, None), 1.0)
            mean = (wts * edges).sum(0) / wts.sum(0)
            spread = np.sqrt((wts * (edges - mean) ** 2).sum(0) / wts.sum(0))
            # Edge-wise means of a hopeless crop can cross; keep the box >= 1 px as snapping does.
            box = xyxy_to_xywh(tidy_boxes(mean[None], float(snap["width"].iloc[0]), float(snap["height"].iloc[0])))[0]
            conf_mean = np.nanmean(conf, axis=0) if np.isfinite(conf).any() else np.full(4, np.nan)
            extent = np.array([box[2], box[3], box[2], box[3]])
            entry.update(
                bbox=[round(float(v), 3) for v in box], area=round(float(box[2] * box[3]), 3),
                confidence={e: _num(c) for e, c in zip(EDGE_NAMES, conf_mean)},
                spread_px={e: _num(s, 3) for e, s in zip(EDGE_NAMES, spread)},
                needs_review=bool((conf_mean < cfg.review_threshold).any()
                                  or (spread > cfg.review_moved_frac * np.maximum(extent, 1e-9)).any()),
            )
        fused.append(entry)
    return fused


def _quantiles(v: np.ndarray) -> dict[str, float | None]:
    v = np.asarray(v, dtype=np.float64)
    v = v[np.isfinite(v)]
    if not len(v):
        return {"n": 0}
    out: dict[str, Any] = {"n": int(len(v)), "mean": _num(v.mean())}
    out.update({f"q{int(round(q * 100)):02d}": _num(np.quantile(v, q)) for q in QUANTILES})
    return out


def truth_table(df: pd.DataFrame, truth_file: str | os.PathLike[str]) -> tuple[pd.DataFrame, dict[str, int]]:
    """Table 1 for the input (rough, clipped) and output boxes of the snapped annotations that
    have a usable true box (same annotation id, finite, positive size, not crowd)."""
    from snapper.metrics import box_table, summarize

    truth = parse_rough(truth_file)
    true_by_id: dict[int, np.ndarray] = {}
    n_unusable = 0
    for a in truth.annotations:
        reason, b = _finite_box(a.get("bbox"))
        if reason or a.get("iscrowd") not in (None, 0, False) or b[2] <= 0 or b[3] <= 0:
            n_unusable += 1
            continue
        true_by_id[a["id"]] = b
    s = df[df["status"] == SNAPPED]
    has = s["annotation_id"].isin(true_by_id.keys()).to_numpy()
    m = s[has]
    counts = {"n_evaluated": int(len(m)), "n_snapped_without_truth": int((~has).sum()),
              "n_truth_unusable": n_unusable}
    if not len(m):
        return pd.DataFrame(), counts
    true = xywh_to_xyxy(np.stack([true_by_id[i] for i in m["annotation_id"]]))
    w, h = m["width"].to_numpy(), m["height"].to_numpy()
    rough = xywh_to_xyxy(m[ROUGH_COLS].to_numpy(dtype=np.float64))
    rough[:, [0, 2]] = rough[:, [0, 2]].clip(0, w[:, None])
    rough[:, [1, 3]] = rough[:, [1, 3]].clip(0, h[:, None])
    pred = xywh_to_xyxy(m[PRED_COLS].to_numpy(dtype=np.float64))
    common = dict(image_id=m["image_id"].to_numpy(), annotation_id=m["annotation_id"].to_numpy(), rough_xyxy=rough)
    tables = [box_table(rough, true, method="input", **common),
              box_table(pred, true, method="snapper", confidence=m[CONF_COLS].to_numpy(), **common)]
    return summarize(pd.concat(tables, ignore_index=True)), counts


def merge_chunks(
    ann_file: str | os.PathLike[str],
    chunk_results: Iterable[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    cfg: BatchConfig | None = None,
    truth: str | os.PathLike[str] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Check the accounting, then write ``snapped.json``, ``boxes.parquet``, ``summary.json``
    and ``review.csv`` atomically; returns the path of ``snapped.json``.

    Raises :class:`AccountingError` unless every input annotation id appears exactly once
    over the chunk results plus the annotations of unknown images.
    """
    cfg = cfg or BatchConfig()
    out_dir = Path(out_dir)
    inp = load_rough(ann_file)
    frames = [pd.read_parquet(p) for p in chunk_results]
    orphans = []
    for pos in inp.orphans:
        a = inp.annotations[pos]
        iid = a.get("image_id")
        orphans.append(_row(a["id"], iid if _is_int(iid) else None, "unknown_image", _rough_numbers(a.get("bbox")),
                            detail=f"image_id {iid!r} is not in 'images'"))
    frames.append(_rows_frame(orphans))
    frames = [f for f in frames if len(f)]
    df = pd.concat(frames, ignore_index=True) if frames else _rows_frame([])
    for c in ("status", "reason", "detail"):  # Parquet gives back str columns with NaN holes
        df[c] = df[c].astype(object).where(df[c].notna(), None)
    got = Counter(df["annotation_id"].tolist())
    want = inp.annotation_ids
    dup = [i for i, n in got.items() if n > 1]
    missing = [i for i in want if i not in got]
    extra_ids = sorted(set(got) - set(want))
    if dup or missing or extra_ids:
        raise AccountingError(
            f"{inp.path}: results do not account for every annotation exactly once: "
            f"{len(missing)} missing (e.g. {missing[:5]}), {len(dup)} duplicated (e.g. {dup[:5]}), "
            f"{len(extra_ids)} not in the input (e.g. {extra_ids[:5]})")
    df = df.set_index("annotation_id").loc[want].reset_index()  # input order
    df = _review(df, cfg)
    names = {i: im.get("file_name") for i, im in inp.images.items()}
    df["file_name"] = [names.get(i) if i is not pd.NA else None for i in df["image_id"]]

    anns = []
    for a, r in zip(inp.annotations, df.itertuples(index=False)):
        new = dict(a)
        conf = [getattr(r, c) for c in CONF_COLS]
        if r.status == SNAPPED:
            box = [round(float(getattr(r, c)), 3) for c in PRED_COLS]
            new["bbox"] = box
            if not (_has_segmentation(a) and "area" in a):
                new["area"] = round(box[2] * box[3], 3)
        new["snapper"] = {
            "status": r.status, "reason": r.reason, "detail": r.detail,
            "rough_bbox": a.get("bbox") if isinstance(a.get("bbox"), list) else None,
            "confidence": ({e: _num(c) for e, c in zip(EDGE_NAMES, conf)} if r.status == SNAPPED else None),
            "needs_review": bool(r.needs_review), "review": [x for x in r.review.split(";") if x],
            "moved_px": _num(r.moved_px, 3), "moved_frac": _num(r.moved_frac), "iou_with_rough": _num(r.iou_with_rough),
        }
        anns.append(new)
    out = dict(inp.data)
    out["annotations"] = anns
    fused = _fuse(inp, df, cfg)
    if fused:
        out["snapper_fused"] = fused

    summary: dict[str, Any] = {
        "input": inp.path, "input_sha256": inp.sha256, "output": str(out_dir / OUTPUT_JSON),
        "n_images": len(inp.images), "n_annotations": len(df),
        "status": {s: int((df["status"] == s).sum()) for s in (SNAPPED, KEPT)},
        "reasons": {k: int(v) for k, v in Counter(df["reason"].dropna()).most_common()},
        "needs_review": int(df["needs_review"].sum()),
        "review_reasons": dict(Counter(k for rs in df["review"] for k in {x.split(":")[0] for x in rs.split(";") if x})),
        "confidence": {**{e: _quantiles(df[c]) for e, c in zip(EDGE_NAMES, CONF_COLS)},
                       "min_edge": _quantiles(df[CONF_COLS].min(axis=1, skipna=False))},
        "moved": {"moved_px": _quantiles(df["moved_px"]), "moved_frac": _quantiles(df["moved_frac"]),
                  "iou_with_rough": _quantiles(df["iou_with_rough"]),
                  "n_over_review_frac": int((df["moved_frac"] > cfg.review_moved_frac).sum())},
        "fused_objects": len(fused), "fused_needs_review": sum(f["needs_review"] for f in fused),
        "config": to_dict(cfg),
    }
    if truth is not None:
        table, counts = truth_table(df, truth)
        summary["truth"] = {"file": str(truth), **counts,
                            "table1": json.loads(table.to_json(orient="records")) if len(table) else []}
        if len(table):
            _atomic_csv(table, out_dir / "table1.csv")
    summary.update(extra or {})

    out_dir.mkdir(parents=True, exist_ok=True)
    _atomic_parquet(df, out_dir / BOXES_PARQUET)
    review_cols = ["annotation_id", "image_id", "file_name", "status", "reason", "review", *CONF_COLS, "moved_frac"]
    _atomic_csv(df.loc[df["needs_review"], review_cols], out_dir / REVIEW_CSV)
    atomic_write_text(out_dir / SUMMARY_JSON, json.dumps(summary, indent=2, default=_json_default))
    atomic_write_text(out_dir / OUTPUT_JSON, json.dumps(out))  # last: its presence means "done"
    return out_dir / OUTPUT_JSON


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return None if not np.isfinite(o) else float(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _atomic_csv(df: pd.DataFrame, path: Path) -> None:
    atomic_write_text(path, df.to_csv(index=False))


# ----------------------------------------------------------------------------- in-process


@dataclass
class BatchResult:
    out_dir: Path
    annotations: Path  # snapped.json
    boxes: Path  # boxes.parquet
    summary_path: Path
    review: Path
    summary: dict[str, Any] = field(default_factory=dict)


def result_for(out_dir: str | os.PathLike[str]) -> BatchResult:
    d = Path(out_dir)
    return BatchResult(d, d / OUTPUT_JSON, d / BOXES_PARQUET, d / SUMMARY_JSON, d / REVIEW_CSV,
                       json.loads((d / SUMMARY_JSON).read_text()))


def batch_snap(
    ann_file: str | os.PathLike[str],
    images_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    model_ref: str | os.PathLike[str] = "models:/snapper/latest",
    cfg: BatchConfig | None = None,
    truth: str | os.PathLike[str] | None = None,
) -> BatchResult:
    """Plan, snap every chunk (reusing finished ones) and merge, all in this process."""
    cfg = cfg or BatchConfig()
    t0 = time.perf_counter()
    chunks = plan_chunks(ann_file, images_dir, cfg.chunk_images)
    results = [snap_chunk(c, model_ref, out_dir, cfg) for c in chunks]
    t_snap = time.perf_counter() - t0
    n_boxes = sum(c.n_annotations for c in chunks)
    extra = {"model": str(model_ref), "checkpoint": str(resolve_checkpoint(model_ref)),
             "n_chunks": len(chunks), "snap_seconds": round(t_snap, 3),
             "annotations_per_s": round(n_boxes / t_snap, 2) if t_snap > 0 else None}
    merge_chunks(ann_file, results, out_dir, cfg, truth=truth, extra=extra)
    return result_for(out_dir)


def input_files(path: str | os.PathLike[str]) -> list[Path]:
    """A JSON file, or the ``*.json`` files of a folder (sorted)."""
    p = Path(path)
    if p.is_dir():
        files = sorted(f for f in p.glob("*.json") if f.is_file())
        if not files:
            raise BatchInputError(f"{p}: folder has no *.json files")
        return files
    if not p.is_file():
        raise BatchInputError(f"{p}: no such file")
    return [p]


# ----------------------------------------------------------------------------------- CLI


def cli_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="snapper batch-snap",
        description="Snap every box of a rough COCO file (or a folder of them) with full accounting.")
    p.add_argument("rough", help="COCO JSON of rough boxes, or a folder of them (each -> OUT_DIR/<stem>/)")
    p.add_argument("images_dir")
    p.add_argument("out_dir")
    p.add_argument("--checkpoint", default="models:/snapper/latest",
                   help="checkpoint folder, or an MLflow model reference (models:/NAME/VERSION|latest, or NAME)")
    p.add_argument("--truth", help="COCO JSON of true boxes with the same annotation ids: report Table 1")
    p.add_argument("--chunk-images", type=int)
    p.add_argument("--review-threshold", type=float)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--workers", type=int)
    p.add_argument("--device")
    p.add_argument("--buffer-ratio", type=float)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any BatchConfig field")
    args = p.parse_args(argv)
    try:
        cfg = apply_overrides(BatchConfig(), args.set)
        for name in ("chunk_images", "review_threshold", "batch_size", "workers", "device", "buffer_ratio"):
            if getattr(args, name) is not None:
                setattr(cfg, name, getattr(args, name))
        files = input_files(args.rough)
        if args.truth and (len(files) > 1 or Path(args.rough).is_dir()):
            raise BatchInputError("--truth needs a single rough file, not a folder")
        for f in files:
            out = Path(args.out_dir) / f.stem if Path(args.rough).is_dir() else Path(args.out_dir)
            r = batch_snap(f, args.images_dir, out, args.checkpoint, cfg, truth=args.truth)
            s = r.summary
            print(f"{f}: {s['n_annotations']} annotations -> {r.annotations}; "
                  f"snapped {s['status']['snapped']}, kept {s['status']['kept']} {s['reasons']}, "
                  f"needs review {s['needs_review']}, {s.get('annotations_per_s')} annotations/s")
            for row in s.get("truth", {}).get("table1", []):
                if row.get("size") == "all":
                    print(f"  {row['method']:<8} mIoU {row['miou']:.1f}  IoU>0.9 {row['iou_gt_0.9']:.1f}  "
                          f"edge<1px {row['edge_lt_1px']:.1f}  edge<3px {row['edge_lt_3px']:.1f}")
    except (BatchInputError, AccountingError, FileNotFoundError, ValueError) as e:
        print(f"snapper batch-snap: {e}", file=sys.stderr)
        return 2
    return 0
