"""Training and evaluation streams over WebDataset shards.

A shard sample is one image: ``<key>.<ext>`` (the original image bytes) and ``<key>.json``
(``image_id``, ``file_name``, ``width``, ``height``, ``annotations``). Each image is decoded
once for all the boxes cut from it (the decode is the largest cost of a crop, so amortising it
is where the throughput comes from), JPEGs at a reduced DCT scale when every crop of the image
is downscaled anyway (``imageio.load_image(min_scale=...)``; this helps less than one might
hope on COCO: one small box forces a full decode, and Huffman decoding, which DCT scaling does
not reduce, dominates). Crops are ``crop.crop_images`` numbers (roi_align, area averaging)
computed by ``cut_crops`` as two separable gather-sums, so training, evaluation and snapping all see
identical pixels.

* ``train_loader``: random jitter + crop on the fly, augmentation, shuffled batches. Shards are
  resampled by default so no rank ever runs dry in DDP; with ``resampled=False`` every shard is
  read exactly once per epoch, split over ranks and workers (and the split must not leave any
  rank x worker without a shard). ``crop_on="device"`` leaves cutting to ``DeviceCropper`` on
  the training device; workers then only decode.
* ``eval_batches``: every non-crowd box exactly once, jittered deterministically per
  annotation id, so results do not depend on order, sharding or worker count.

Bad samples (unreadable image, malformed JSON, unusable box, unreadable shard) are counted in a
``StreamStats`` by reason and logged, never allowed to end an epoch; the counts travel from
loader workers to the main process inside the batches.
"""

from __future__ import annotations

import glob
import json
import logging
import math
import os
import re
import tarfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

import braceexpand
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from webdataset.tariterators import tarfile_samples

from snapper.config import DataConfig, JitterConfig, ModelConfig, TrainConfig
from snapper.crop import crop_images, crop_windows, cut_crops, decode_scale, edge_targets
from snapper.geometry import box_problem, jitter_boxes, jitter_by_annotation, xywh_to_xyxy
from snapper.imageio import ImageError, LoadedImage, dct_scale, load_image

__all__ = [
    "IMAGE_EXTS",
    "DeviceCropper",
    "EvalStream",
    "ImageRecord",
    "SampleError",
    "StreamStats",
    "TrainLoader",
    "augment",
    "count_images",
    "cut_crops",
    "dct_scale",
    "decode_scale",
    "eval_batches",
    "expand_urls",
    "parse_sample",
    "train_loader",
]

log = logging.getLogger(__name__)

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff")
MAX_WARNINGS_PER_REASON = 20  # per stream pass and worker; counting goes on silently after that
MAX_CONSECUTIVE_FAILURES = 200  # a training stream that delivers nothing is broken, not unlucky
CROP_MODES = ("worker", "device")


# ----------------------------------------------------------------------------------- shard URLs


def _is_local(url: str) -> bool:
    return not url.startswith("pipe:") and "://" not in url.replace("file://", "", 1)


def _local_path(url: str) -> str:
    return url[len("file://"):] if url.startswith("file://") else url


MANIFEST_SUFFIX = "-manifest.json"
_MANIFEST_RE = re.compile(r"([A-Za-z0-9_]+)-manifest\.json")


def _manifest_urls(url: str) -> list[str]:
    """Shard URLs listed by a ``snapper.data.shards`` manifest (local or any webdataset URL)."""
    from snapper.data.shards import shard_urls

    found = _MANIFEST_RE.findall(url)
    if not found:
        raise ValueError(f"{url}: a manifest URL must name <split>-manifest.json")
    return shard_urls(_local_path(url) if _is_local(url) else url, found[-1])


def _read_manifest(url: str) -> dict[str, Any]:
    from webdataset.gopen import gopen

    with gopen(_local_path(url) if _is_local(url) else url, "rb") as f:
        return json.loads(f.read())


def expand_urls(urls: "str | os.PathLike[str] | Sequence[str | os.PathLike[str]]") -> list[str]:
    """Shard URLs from braces, ``::``-joined lists, globs, ``pipe:`` commands, shard manifests
    (``<split>-manifest.json``, local or remote) or directories (their one manifest, else their
    ``*.tar``). Local shards must exist: a typo fails here, not hours into training."""
    items = [urls] if isinstance(urls, (str, os.PathLike)) else list(urls)
    out: list[str] = []
    for item in items:
        for part in str(item).split("::"):
            for url in braceexpand.braceexpand(part):
                if MANIFEST_SUFFIX in url:
                    out.extend(_manifest_urls(url))
                    continue
                if not _is_local(url):
                    out.append(url)
                    continue
                path = _local_path(url)
                if os.path.isdir(path):
                    manifests = sorted(glob.glob(os.path.join(path, "*" + MANIFEST_SUFFIX)))
                    if len(manifests) > 1:
                        raise ValueError(f"shard directory {path} holds several splits "
                                         f"({', '.join(os.path.basename(m) for m in manifests)}): name one manifest")
                    found = _manifest_urls(manifests[0]) if manifests else sorted(glob.glob(os.path.join(path, "*.tar")))
                    if not found:
                        raise FileNotFoundError(f"shard directory {path} holds no *.tar files")
                    out.extend(found)
                elif glob.has_magic(path):
                    found = sorted(glob.glob(path))
                    if not found:
                        raise FileNotFoundError(f"shard pattern {path} matches no file")
                    out.extend(found)
                elif not os.path.isfile(path):
                    raise FileNotFoundError(f"shard {path} does not exist")
                else:
                    out.append(url)
    if not out:
        raise ValueError("no shard URLs given")
    return out


def count_images(urls: Sequence[str]) -> int | None:
    """Images in local shards, from tar headers only (no data read); None if any is remote."""
    n = 0
    for url in urls:
        if not _is_local(url):
            return None
        with tarfile.open(_local_path(url), "r:") as tf:
            n += sum(1 for m in tf if m.isfile() and m.name.endswith(".json"))
    return n


def _count_from_manifests(items: Sequence[str]) -> int | None:
    """Images listed by the manifests when every entry names one (remote shards: no tar to scan)."""
    if not items or not all(_MANIFEST_RE.search(str(i)) for i in items):
        return None
    return sum(int(_read_manifest(str(i))["counts"]["images"]) for i in items)


# ------------------------------------------------------------------------------- sample parsing


class SampleError(ValueError):
    """A shard sample that cannot be used; ``reason`` is a short stable string for counting."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass
class ImageRecord:
    """One shard sample, parsed: the encoded image and its annotations as arrays."""

    key: str
    url: str
    image_id: int
    file_name: str
    width: int
    height: int
    data: bytes
    boxes: np.ndarray  # (n, 4) COCO xywh, float64
    annotation_ids: np.ndarray  # (n,) int64
    category_ids: np.ndarray  # (n,) int64
    iscrowd: np.ndarray  # (n,) bool
    areas: np.ndarray  # (n,) float64

    @property
    def name(self) -> str:
        return f"{self.file_name} ({self.url}:{self.key})"


def parse_sample(sample: dict[str, Any]) -> ImageRecord:
    """A WebDataset sample dict -> ImageRecord; SampleError names the shard and key."""
    where = f"{sample.get('__url__')}:{sample.get('__key__')}"
    if "json" not in sample:
        raise SampleError("missing_json", f"{where}: sample has no .json member")
    try:
        meta = json.loads(sample["json"])
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SampleError("bad_json", f"{where}: .json is not valid JSON ({e})") from e
    if not isinstance(meta, dict):
        raise SampleError("bad_json", f"{where}: .json is not an object")
    ext = next((e for e in IMAGE_EXTS if e in sample), None)
    if ext is None:
        raise SampleError("missing_image", f"{where}: no image member (.{'/.'.join(IMAGE_EXTS)})")
    try:
        width, height = int(meta["width"]), int(meta["height"])
        anns = meta.get("annotations") or []
        if not isinstance(anns, list):
            raise TypeError("annotations is not a list")
        boxes = np.array([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4)
        if len(boxes) != len(anns):
            raise ValueError("a bbox does not have 4 numbers")
        rec = ImageRecord(
            key=str(sample.get("__key__")),
            url=str(sample.get("__url__")),
            image_id=int(meta["image_id"]),
            file_name=str(meta.get("file_name", sample.get("__key__"))),
            width=width,
            height=height,
            data=sample[ext],
            boxes=boxes,
            annotation_ids=np.array([int(a["id"]) for a in anns], dtype=np.int64),
            category_ids=np.array([int(a.get("category_id", -1)) for a in anns], dtype=np.int64),
            iscrowd=np.array([bool(a.get("iscrowd", 0)) for a in anns], dtype=bool),
            areas=np.array([float(a.get("area", a["bbox"][2] * a["bbox"][3])) for a in anns], dtype=np.float64),
        )
    except (KeyError, TypeError, ValueError, IndexError) as e:
        raise SampleError("bad_json", f"{where}: malformed metadata ({e!r})") from e
    return rec


# --------------------------------------------------------------------------------- accounting


@dataclass
class StreamStats:
    """What a stream delivered and what it did not, by reason (so nothing is lost silently).

    ``skipped_*`` are failures (corrupt image, malformed JSON, unusable box, unreadable shard);
    ``excluded_boxes`` are boxes left out by rule (crowd, below ``min_box_size``).
    """

    images: int = 0
    boxes: int = 0
    skipped_images: Counter = field(default_factory=Counter)
    skipped_boxes: Counter = field(default_factory=Counter)
    excluded_boxes: Counter = field(default_factory=Counter)
    shard_errors: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "images": self.images,
            "boxes": self.boxes,
            "skipped_images": dict(self.skipped_images),
            "skipped_boxes": dict(self.skipped_boxes),
            "excluded_boxes": dict(self.excluded_boxes),
            "shard_errors": self.shard_errors,
        }

    def merge(self, other: "StreamStats | dict[str, Any]") -> None:
        d = other.as_dict() if isinstance(other, StreamStats) else other
        self.images += int(d.get("images", 0))
        self.boxes += int(d.get("boxes", 0))
        self.skipped_images.update(d.get("skipped_images", {}))
        self.skipped_boxes.update(d.get("skipped_boxes", {}))
        self.excluded_boxes.update(d.get("excluded_boxes", {}))
        self.shard_errors += int(d.get("shard_errors", 0))

    @property
    def n_skipped_images(self) -> int:
        return sum(self.skipped_images.values())


class _Tally:
    """Per-pass (per worker) counting and rate-limited warnings; ``take`` hands the counts on."""

    def __init__(self, failure_limit: int | None = None):
        self.stats = StreamStats()
        self.pending = False
        self._warned: Counter = Counter()
        self._consecutive = 0
        self._failure_limit = failure_limit

    def _warn(self, reason: str, message: str) -> None:
        self._warned[reason] += 1
        if self._warned[reason] <= MAX_WARNINGS_PER_REASON:
            log.warning("skipped (%s): %s", reason, message)
            if self._warned[reason] == MAX_WARNINGS_PER_REASON:
                log.warning("further %r skips are counted but not logged in this pass", reason)

    def _failed(self, message: str) -> None:
        self._consecutive += 1
        if self._failure_limit is not None and self._consecutive >= self._failure_limit:
            raise RuntimeError(f"{self._consecutive} consecutive images/shards failed, none delivered; "
                               f"last: {message}")

    def image_failed(self, reason: str, message: str, n_boxes: int = 0) -> None:
        self.pending = True
        self.stats.skipped_images[reason] += 1
        if n_boxes:
            self.stats.skipped_boxes[reason] += n_boxes
        self._warn(reason, message)
        self._failed(message)

    def box_failed(self, reason: str, message: str) -> None:
        self.pending = True
        self.stats.skipped_boxes[reason] += 1
        self._warn(reason, message)

    def excluded(self, reason: str, n: int) -> None:
        if n:
            self.pending = True
            self.stats.excluded_boxes[reason] += n

    def delivered(self, n_boxes: int) -> None:
        self.pending = True
        self._consecutive = 0
        self.stats.images += 1
        self.stats.boxes += n_boxes

    def shard_failed(self, exn: Exception) -> bool:
        """WebDataset handler: count, warn, go on with the next shard."""
        self.pending = True
        self.stats.shard_errors += 1
        self._warn("shard_error", f"{type(exn).__name__}: {exn}")
        self._failed(repr(exn))
        return True

    def take(self) -> dict[str, Any]:
        d = self.stats.as_dict()
        self.stats = StreamStats()
        self.pending = False
        return d


def _records(samples: Iterable[dict[str, Any]], tally: _Tally) -> Iterator[ImageRecord]:
    for sample in samples:
        try:
            yield parse_sample(sample)
        except SampleError as e:
            tally.image_failed(e.reason, str(e))


def _usable(rec: ImageRecord, tally: _Tally, min_size: float = 0.0) -> np.ndarray:
    """Indices of the boxes that can be cropped; the others are counted by reason."""
    crowd = rec.iscrowd
    tally.excluded("crowd", int(crowd.sum()))
    keep = []
    small = 0
    for i in np.flatnonzero(~crowd):
        problem = box_problem(rec.boxes[i], rec.width, rec.height)
        if problem is not None:
            tally.box_failed(f"box_{problem}", f"annotation {int(rec.annotation_ids[i])} in {rec.name}: "
                             f"bbox {rec.boxes[i].tolist()} is {problem}")
        elif rec.boxes[i, 2] < min_size or rec.boxes[i, 3] < min_size:
            small += 1
        else:
            keep.append(i)
    tally.excluded("small", small)
    return np.asarray(keep, dtype=np.int64)


# ------------------------------------------------------------------------------ decode and crop


def _decode(rec: ImageRecord, windows: np.ndarray, size: int, draft: bool) -> tuple[LoadedImage, tuple[float, float]]:
    li = load_image(rec.data, name=rec.name, min_scale=decode_scale(windows, size) if draft else 1.0)
    if (li.width, li.height) != (rec.width, rec.height):
        raise SampleError("size_mismatch", f"{rec.name}: image is {li.width}x{li.height} but its "
                          f"metadata says {rec.width}x{rec.height}")
    h, w = li.tensor.shape[1:]
    return li, (dct_scale(w, li.width), dct_scale(h, li.height))


def _to_uint8(x: torch.Tensor) -> torch.Tensor:
    return x.round_().clamp_(0, 255).to(torch.uint8)


def hflip_targets(targets: torch.Tensor, size: int) -> torch.Tensor:
    """Edges (left, top, right, bottom) of a mirrored crop: left' = S - right, right' = S - left."""
    t = targets.clone()
    t[..., 0] = size - targets[..., 2]
    t[..., 2] = size - targets[..., 0]
    return t


def augment(
    crops: torch.Tensor,
    targets: torch.Tensor,
    flip: torch.Tensor | None = None,
    color: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mirror the flagged crops (and their targets) and apply per-crop colour factors.

    ``crops`` (k, 3, S, S) float in [0, 255], ``targets`` (k, 4) input px; ``flip`` (k,) bool;
    ``color`` (k, 3) = brightness, contrast, saturation factors (1 = unchanged). Parameters are
    drawn by the loader's RNG so that CPU and device cropping give the same samples.
    """
    size = crops.shape[-1]
    crops = crops.to(torch.float32)
    if flip is not None and bool(flip.any()):
        flip = flip.to(crops.device)
        crops = crops.clone()
        crops[flip] = crops[flip].flip(-1)
        targets = torch.where(flip.view(-1, 1), hflip_targets(targets, size), targets)
    if color is not None:
        # brightness b, saturation s (blend with luma), contrast c (blend with the mean luma) are
        # all affine in RGB: x' = c b (s I + (1 - s) 1 lum^T) x + (1 - c) b mean(lum . x),
        # one batched 3x3 matmul instead of a pass per operation
        k = crops.shape[0]
        f = color.to(crops.device, torch.float32)
        b, c, s = f[:, 0], f[:, 1], f[:, 2]
        lum = torch.tensor([0.299, 0.587, 0.114], device=crops.device)
        eye = torch.eye(3, device=crops.device)
        mat = (c * b).view(k, 1, 1) * (s.view(k, 1, 1) * eye + (1 - s).view(k, 1, 1) * lum.view(1, 1, 3))
        flat = crops.reshape(k, 3, -1)
        offset = (1 - c) * b * (flat.mean(2) @ lum)
        crops = torch.baddbmm(offset.view(k, 1, 1), mat, flat).clamp_(0, 255).view_as(crops)
    return crops, targets


def _draw_augment(rng: np.random.Generator, k: int, data: DataConfig) -> tuple[torch.Tensor, torch.Tensor | None]:
    flip = torch.from_numpy(rng.random(k) < 0.5) if data.hflip else torch.zeros(k, dtype=torch.bool)
    color = None
    if data.color_jitter > 0:
        j = data.color_jitter
        color = torch.from_numpy(rng.uniform(1 - j, 1 + j, (k, 3)).astype(np.float32))
    return flip, color


# ------------------------------------------------------------------------------ small iterators


def _shuffle(items: Iterable[Any], bufsize: int, rng: np.random.Generator) -> Iterator[Any]:
    if bufsize <= 1:
        yield from items
        return
    buf: list[Any] = []
    for x in items:
        if len(buf) < bufsize:
            buf.append(x)
            continue
        j = int(rng.integers(len(buf)))
        yield buf[j]
        buf[j] = x
    for j in rng.permutation(len(buf)):
        yield buf[j]


def _batched(
    items: Iterable[Any],
    n: int,
    collate: Callable[[list[Any]], dict[str, Any]],
    tally: _Tally,
    partial: bool,
) -> Iterator[dict[str, Any]]:
    """Batches carry the counts since the previous batch under "stats"; a final stats-only
    batch ({"stats", "empty": True}) reports skips that happened after the last full batch."""
    buf: list[Any] = []
    for x in items:
        buf.append(x)
        if len(buf) == n:
            batch = collate(buf)
            batch["stats"] = tally.take()
            yield batch
            buf = []
    if buf and partial:
        batch = collate(buf)
        batch["stats"] = tally.take()
        yield batch
    if tally.pending:
        yield {"stats": tally.take(), "empty": True}


def _worker() -> tuple[int, int]:
    info = get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


# ------------------------------------------------------------------------------- training stream


@dataclass
class _Crop:
    image: torch.Tensor  # (3, S, S) uint8
    target: torch.Tensor  # (4,) float32
    image_id: int
    annotation_id: int


def _collate_crops(items: list[_Crop]) -> dict[str, Any]:
    return {
        "image": torch.stack([c.image for c in items]),
        "target": torch.stack([c.target for c in items]),
        "image_id": torch.tensor([c.image_id for c in items], dtype=torch.int64),
        "annotation_id": torch.tensor([c.annotation_id for c in items], dtype=torch.int64),
    }


def _collate_images(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {"images": items}


class _TrainDataset(IterableDataset):
    """One pass of the training pipeline in one worker (``epoch`` is set by the main process)."""

    def __init__(self, urls: list[str], cfg: TrainConfig, rank: int, world_size: int,
                 batches_per_worker: int | None):
        super().__init__()
        self.urls = urls
        self.cfg = cfg
        self.rank = rank
        self.world_size = world_size
        self.batches_per_worker = batches_per_worker
        self.epoch = 0  # exact epochs: this epoch; resampled: the epoch the endless stream began
        self._live: Iterator[dict[str, Any]] | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_live"] = None  # a running generator stays in its process
        return state

    def reset(self) -> None:
        self._live = None

    # shards ---------------------------------------------------------------------------------
    def _shards(self, rng: np.random.Generator, worker: int, num_workers: int) -> Iterator[dict[str, str]]:
        if self.cfg.data.resampled:
            while True:
                yield {"url": self.urls[int(rng.integers(len(self.urls)))]}
        # Same permutation on every rank (seeded by epoch only), then rank, then worker slice:
        # the slices partition the shard list, so each shard is read exactly once per epoch.
        need = self.world_size * num_workers
        if len(self.urls) < need:
            raise ValueError(_too_few_shards(len(self.urls), self.world_size, num_workers))
        order = np.random.default_rng([self.cfg.seed, self.cfg.data.seed, self.epoch]).permutation(len(self.urls))
        for i in order[self.rank :: self.world_size][worker::num_workers]:
            yield {"url": self.urls[int(i)]}

    # per image ------------------------------------------------------------------------------
    def _prepare(self, rec: ImageRecord, rng: np.random.Generator, tally: _Tally):
        """Sample boxes, jitter, decode once. Returns ((image, scale), windows, targets, chosen) or None."""
        cfg = self.cfg
        size = cfg.model.input_size
        usable = _usable(rec, tally, cfg.data.min_box_size)
        if len(usable) == 0:
            return None
        k = min(cfg.data.boxes_per_image, len(usable))
        chosen = np.sort(rng.choice(usable, size=k, replace=False))
        true = xywh_to_xyxy(rec.boxes[chosen])
        rough = jitter_boxes(true, rec.width, rec.height, rng, cfg.jitter)
        windows = crop_windows(rough, 1.0, cfg.model.context)
        try:
            decoded = _decode(rec, windows, size, cfg.data.draft_decode)
        except (ImageError, SampleError) as e:
            tally.image_failed(getattr(e, "reason", "corrupt_image"), str(e), n_boxes=k)
            return None
        targets = torch.from_numpy(edge_targets(true, windows, size).astype(np.float32))
        return decoded, windows, targets, chosen

    def _crops(self, records: Iterable[ImageRecord], rng: np.random.Generator, tally: _Tally) -> Iterator[_Crop]:
        size = self.cfg.model.input_size
        for rec in records:
            try:
                prep = self._prepare(rec, rng, tally)
                if prep is None:
                    continue
                (li, scale), windows, targets, chosen = prep
                flip, color = _draw_augment(rng, len(chosen), self.cfg.data)
                crops = cut_crops(li.tensor, windows, size, scale, mirror=flip)
                targets = torch.where(flip.view(-1, 1), hflip_targets(targets, size), targets)
                crops = _to_uint8(augment(crops, targets, None, color)[0])
            except Exception as e:  # noqa: BLE001 - one bad image must not end the epoch
                tally.image_failed("unexpected_error", f"{rec.name}: {type(e).__name__}: {e}")
                continue
            tally.delivered(len(chosen))
            for j, i in enumerate(chosen):
                yield _Crop(crops[j], targets[j], rec.image_id, int(rec.annotation_ids[i]))

    def _images(self, records: Iterable[ImageRecord], rng: np.random.Generator,
                tally: _Tally) -> Iterator[dict[str, Any]]:
        for rec in records:
            try:
                prep = self._prepare(rec, rng, tally)
                if prep is None:
                    continue
                (li, scale), windows, targets, chosen = prep
                flip, color = _draw_augment(rng, len(chosen), self.cfg.data)
            except Exception as e:  # noqa: BLE001
                tally.image_failed("unexpected_error", f"{rec.name}: {type(e).__name__}: {e}")
                continue
            tally.delivered(len(chosen))
            yield {
                "image": li.tensor,
                "scale": scale,
                "window": windows,
                "target": targets,
                "flip": flip,
                "color": color,
                "image_id": rec.image_id,
                "annotation_id": torch.from_numpy(rec.annotation_ids[chosen]),
            }

    def __iter__(self) -> Iterator[dict[str, Any]]:
        if self.batches_per_worker is None:
            return self._pipeline()
        # Resampled: one endless stream per worker, cut into epochs. Restarting it every epoch
        # would refill and then discard the shuffle buffers (a third of the work per epoch on a
        # 128-image folder).
        if self._live is None:
            self._live = self._pipeline()
        return islice(self._live, self.batches_per_worker)

    def _pipeline(self) -> Iterator[dict[str, Any]]:
        cfg = self.cfg
        worker, num_workers = _worker()
        rng = np.random.default_rng([cfg.seed, cfg.data.seed, self.rank, worker, self.epoch])
        tally = _Tally(MAX_CONSECUTIVE_FAILURES if cfg.data.resampled else None)
        samples = tarfile_samples(self._shards(rng, worker, num_workers), handler=tally.shard_failed)
        per_image_buf = max(1, cfg.data.shuffle_buffer // max(1, cfg.data.boxes_per_image))
        records = _shuffle(_records(samples, tally), per_image_buf, rng)
        partial = not cfg.data.resampled
        if cfg.data.crop_on == "device":
            per_batch = max(1, cfg.batch_size // max(1, cfg.data.boxes_per_image))
            batches = _batched(self._images(records, rng, tally), per_batch, _collate_images, tally, partial)
        else:
            crops = _shuffle(self._crops(records, rng, tally), cfg.data.shuffle_buffer, rng)
            batches = _batched(crops, cfg.batch_size, _collate_crops, tally, partial)
        yield from batches


def _too_few_shards(n: int, world_size: int, num_workers: int) -> str:
    return (f"{n} shard(s) for {world_size} rank(s) x {num_workers} worker(s): with resampled=False every "
            f"rank x worker needs at least one shard. Write more, smaller shards, use fewer workers, or "
            f"set data.resampled=true.")


class DeviceCropper:
    """Cuts, augments and batches crops on the training device from a ``crop_on="device"`` batch
    (the loader workers only decode, at the draft scale, and draw the random parameters)."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, batch: dict[str, Any], device: "torch.device | str") -> dict[str, Any]:
        crops, targets, image_ids, ann_ids = [], [], [], []
        for item in batch["images"]:
            img = item["image"].to(device, non_blocking=True)
            c = crop_images(img, item["window"], self.size, item["scale"])
            c, t = augment(c, item["target"].to(device), item["flip"], item["color"])
            crops.append(c)
            targets.append(t)
            image_ids.append(torch.full((len(c),), int(item["image_id"]), dtype=torch.int64))
            ann_ids.append(torch.as_tensor(item["annotation_id"], dtype=torch.int64))
        if not crops:
            raise ValueError("DeviceCropper got a batch without images")
        return {
            "image": _to_uint8(torch.cat(crops)),
            "target": torch.cat(targets),
            "image_id": torch.cat(image_ids).to(device),
            "annotation_id": torch.cat(ann_ids).to(device),
        }


class TrainLoader:
    """Iterable of training batches ``{"image": uint8 (B,3,S,S), "target": float32 (B,4),
    "image_id", "annotation_id"}`` (``crop_on="device"``: ``{"images": [...]}``; pass every
    batch through ``to_device``, which works for both modes).

    Each ``iter()`` is one epoch. Resampled (default): ``batches_per_epoch`` batches per rank,
    cut from one endless stream per worker (persistent workers; the stream is seeded by
    (seed, data seed, rank, worker, the epoch it began), so ``set_epoch`` on resume starts a
    fresh, reproducible stream). Otherwise: one exact pass over this rank's shards, reseeded
    every epoch. ``stats`` accumulates the counts from all workers.
    """

    def __init__(self, cfg: TrainConfig, rank: int = 0, world_size: int = 1):
        data = cfg.data
        if data.crop_on not in CROP_MODES:
            raise ValueError(f"data.crop_on must be one of {CROP_MODES}, got {data.crop_on!r}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in a world of size {world_size}")
        if not data.train_shards:
            raise ValueError("data.train_shards is empty: give shard paths, globs or pipe: URLs")
        for name in ("batch_size",):
            if getattr(cfg, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if data.boxes_per_image < 1:
            raise ValueError("data.boxes_per_image must be >= 1")
        self.cfg = cfg
        self.urls = expand_urls(data.train_shards)
        self.num_workers = max(0, data.workers)
        nw = max(1, self.num_workers)
        self.batches_per_epoch: int | None = None
        per_worker = None
        if data.resampled:
            total = data.epoch_samples
            if total is None:
                n_images = count_images(self.urls)
                if n_images is None:
                    n_images = _count_from_manifests([str(u) for u in data.train_shards])
                if n_images is None:
                    raise ValueError("data.epoch_samples must be set when shards are remote and not given "
                                     "by their manifest")
                total = n_images * data.boxes_per_image
            per_worker = max(1, math.ceil(total / (world_size * cfg.batch_size * nw)))
            self.batches_per_epoch = per_worker * nw
        elif len(self.urls) < world_size * nw:
            raise ValueError(_too_few_shards(len(self.urls), world_size, nw))
        self.dataset = _TrainDataset(self.urls, cfg, rank, world_size, per_worker)
        self.cropper = DeviceCropper(cfg.model.input_size) if data.crop_on == "device" else None
        self.stats = StreamStats()
        self.epoch = 0
        self._loader: DataLoader | None = None

    def set_epoch(self, epoch: int) -> None:
        """Continue from ``epoch`` (e.g. on resume): resampled streams restart, seeded by it."""
        self.epoch = int(epoch)
        if self.cfg.data.resampled:
            self.dataset.epoch = self.epoch
            self.dataset.reset()
            self._loader = None

    def _data_loader(self, persistent: bool) -> DataLoader:
        return DataLoader(
            self.dataset,
            batch_size=None,
            num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available() and self.cropper is None,
            persistent_workers=persistent,
        )

    def __iter__(self) -> Iterator[dict[str, Any]]:
        resampled = self.cfg.data.resampled
        if not resampled:
            self.dataset.epoch = self.epoch  # new shard permutation and seeds
        self.epoch += 1
        source: Iterable[dict[str, Any]]
        if self.num_workers == 0:
            source = iter(self.dataset)
        elif resampled:
            if self._loader is None:
                self._loader = self._data_loader(persistent=True)
            source = self._loader
        else:
            source = self._data_loader(persistent=False)
        for batch in source:
            self.stats.merge(batch.pop("stats"))
            if batch.get("empty"):
                continue
            yield batch

    def to_device(self, batch: dict[str, Any], device: "torch.device | str") -> dict[str, Any]:
        """The batch on ``device``, crops cut there first in ``crop_on="device"`` mode."""
        if self.cropper is not None:
            return self.cropper(batch, device)
        return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def train_loader(cfg: TrainConfig, rank: int = 0, world_size: int = 1) -> TrainLoader:
    """The training stream for one rank (``cfg.batch_size`` crops per batch on each rank)."""
    return TrainLoader(cfg, rank=rank, world_size=world_size)


# ----------------------------------------------------------------------------- evaluation stream


def _collate_eval(items: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k in items[0]:
        vals = [it[k] for it in items]
        out[k] = vals if k == "file_name" else torch.stack(vals)
    return out


class _EvalDataset(IterableDataset):
    def __init__(self, urls: list[str], model_cfg: ModelConfig, jitter: JitterConfig, seed: int,
                 buffer_ratio: float, batch_size: int, draft_decode: bool):
        super().__init__()
        self.urls = urls
        self.model_cfg = model_cfg
        self.jitter = jitter
        self.seed = seed
        self.buffer_ratio = buffer_ratio
        self.batch_size = batch_size
        self.draft_decode = draft_decode

    def _items(self, records: Iterable[ImageRecord], tally: _Tally) -> Iterator[dict[str, Any]]:
        size = self.model_cfg.input_size
        for rec in records:
            idx = _usable(rec, tally)
            if len(idx) == 0:
                tally.delivered(0)
                continue
            true = xywh_to_xyxy(rec.boxes[idx])
            try:
                rough = jitter_by_annotation(true, rec.annotation_ids[idx], rec.width, rec.height,
                                             self.jitter, self.seed)
                windows = crop_windows(rough, self.buffer_ratio, self.model_cfg.context)
                li, scale = _decode(rec, windows, size, self.draft_decode)
                crops = _to_uint8(cut_crops(li.tensor, windows, size, scale))
                targets = edge_targets(true, windows, size).astype(np.float32)
            except (ImageError, SampleError) as e:
                tally.image_failed(getattr(e, "reason", "corrupt_image"), str(e), n_boxes=len(idx))
                continue
            except Exception as e:  # noqa: BLE001
                tally.image_failed("unexpected_error", f"{rec.name}: {type(e).__name__}: {e}", n_boxes=len(idx))
                continue
            tally.delivered(len(idx))
            size_t = torch.tensor([rec.width, rec.height], dtype=torch.int64)
            for j, i in enumerate(idx):
                yield {
                    "image": crops[j],
                    "target": torch.from_numpy(targets[j]),
                    "window": torch.from_numpy(windows[j]),
                    "rough": torch.from_numpy(rough[j]),
                    "true": torch.from_numpy(true[j]),
                    "annotation_id": torch.tensor(int(rec.annotation_ids[i])),
                    "image_id": torch.tensor(rec.image_id),
                    "category_id": torch.tensor(int(rec.category_ids[i])),
                    "area": torch.tensor(float(rec.areas[i]), dtype=torch.float64),
                    "image_size": size_t,
                    "file_name": rec.file_name,
                }

    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker, num_workers = _worker()
        tally = _Tally()
        mine = ({"url": u} for u in self.urls[worker::num_workers])
        records = _records(tarfile_samples(mine, handler=tally.shard_failed), tally)
        yield from _batched(self._items(records, tally), self.batch_size, _collate_eval, tally, partial=True)


class EvalStream:
    """Iterator over evaluation batches; ``stats`` holds what was delivered and skipped (final
    once the iterator is exhausted). Batches: "image" uint8 (B,3,S,S); "window", "rough",
    "true" float64 (B,4) original px xyxy; "target" float32 (B,4) true edges in input px;
    "annotation_id", "image_id", "category_id" int64 (B,); "area" float64 (B,);
    "image_size" int64 (B,2) = (width, height); "file_name" list[str]."""

    def __init__(self, dataset: _EvalDataset, workers: int, max_boxes: int | None):
        self.dataset = dataset
        self.workers = workers
        self.max_boxes = max_boxes
        self.stats = StreamStats()
        self._it: Iterator[dict[str, Any]] | None = None

    def __iter__(self) -> "EvalStream":
        return self

    def __next__(self) -> dict[str, Any]:
        if self._it is None:
            self._it = self._generate()
        return next(self._it)

    def _generate(self) -> Iterator[dict[str, Any]]:
        if self.workers > 0:
            source: Iterable[dict[str, Any]] = DataLoader(self.dataset, batch_size=None, num_workers=self.workers)
        else:
            source = iter(self.dataset)
        remaining = self.max_boxes
        for batch in source:
            self.stats.merge(batch.pop("stats"))
            if batch.get("empty"):
                continue
            if remaining is not None:
                n = len(batch["annotation_id"])
                if n > remaining:
                    batch = {k: v[:remaining] for k, v in batch.items()}
                remaining -= len(batch["annotation_id"])
            yield batch
            if remaining is not None and remaining <= 0:
                return


def eval_batches(
    urls: "str | Sequence[str]",
    model_cfg: ModelConfig,
    jitter: JitterConfig,
    seed: int = 0,
    buffer_ratio: float = 1.0,
    batch_size: int = 64,
    max_boxes: int | None = None,
    workers: int = 0,
    draft_decode: bool = True,
) -> EvalStream:
    """Every non-crowd box of the shards exactly once, jittered per annotation id (seed),
    cropped with ``buffer_ratio * context``; no shuffling or augmentation. With ``workers`` > 0
    the shards are dealt to workers in order (worker w reads shards w, w + n, ...), so the
    union is the same set of boxes; ``max_boxes`` keeps the first boxes delivered."""
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    if max_boxes is not None and max_boxes < 0:
        raise ValueError("max_boxes must be >= 0")
    if not np.isfinite(buffer_ratio) or buffer_ratio <= 0:
        raise ValueError(f"buffer_ratio must be a positive number, got {buffer_ratio!r}")
    dataset = _EvalDataset(expand_urls(urls), model_cfg, jitter, seed, buffer_ratio, batch_size, draft_decode)
    return EvalStream(dataset, max(0, workers), max_boxes)
