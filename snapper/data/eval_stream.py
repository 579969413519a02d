"""The evaluation stream: every non-crowd box exactly once, jittered deterministically per
annotation id, so results do not depend on order, sharding or worker count.

Crops go through the same :class:`snapper.crop.CropGeometry` as training and snapping
(``buffer_ratio * context`` windows, the fast CPU kernel, one decode per image), so an
evaluated model sees the pixels it would see in use.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

from snapper.config import JitterConfig, ModelConfig
from snapper.crop import CropGeometry, to_uint8
from snapper.data.accounting import StreamStats, Tally
from snapper.data.coco import CocoFormatError, read_coco_json
from snapper.data.iterators import batched, worker_slot
from snapper.data.manifest import expand_urls
from snapper.data.reader import shard_samples
from snapper.data.records import ImageRecord
from snapper.data.samples import SampleError, decode, parsed, usable
from snapper.errors import ConfigError
from snapper.geometry import clip_boxes, jitter_by_annotation, xywh_to_xyxy
from snapper.imageio import ImageError

LIST_KEYS = ("file_name", "source")  # per box, not stacked: names and (image, scale) references


def _collate_eval(items: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k in items[0]:
        vals = [it[k] for it in items]
        out[k] = vals if k in LIST_KEYS else torch.stack(vals)
    return out


class _EvalDataset(IterableDataset):
    def __init__(self, urls: list[str], model_cfg: ModelConfig, jitter: JitterConfig, seed: int,
                 buffer_ratio: float, batch_size: int, draft_decode: bool, verify_shards: bool = True,
                 keep_images: bool = False, rough: dict[int, np.ndarray] | None = None):
        super().__init__()
        self.rough = rough
        self.keep_images = keep_images
        self.verify_shards = verify_shards
        self.urls = urls
        self.model_cfg = model_cfg
        self.jitter = jitter
        self.seed = seed
        self.buffer_ratio = buffer_ratio
        self.batch_size = batch_size
        self.draft_decode = draft_decode

    def _cut(self, rec: ImageRecord, true: np.ndarray,
             idx: np.ndarray) -> tuple[np.ndarray, CropGeometry, torch.Tensor, np.ndarray, tuple[Any, ...] | None]:
        """(rough boxes, their crop geometry, uint8 crops, float32 targets, the decoded image and
        its scale when ``keep_images``) of one image."""
        if self.rough is not None:
            rough = clip_boxes(np.stack([self.rough[int(a)] for a in rec.annotation_ids[idx]]), rec.width, rec.height)
        else:
            rough = jitter_by_annotation(true, rec.annotation_ids[idx], rec.width, rec.height, self.jitter, self.seed)
        geometry = CropGeometry.around(rough, self.model_cfg.input_size, self.model_cfg.context, self.buffer_ratio)
        # a second pass reads ~1 original px per input px: no draft decode for it
        li, scale = decode(rec, geometry, self.draft_decode and not self.keep_images)
        crops = to_uint8(geometry.cut(li.tensor, scale))
        source = (li.tensor, scale) if self.keep_images else None
        return rough, geometry, crops, geometry.targets(true).astype(np.float32), source

    def _items(self, records: Iterable[ImageRecord], tally: Tally) -> Iterator[dict[str, Any]]:
        for rec in records:
            idx = usable(rec, tally)
            if self.rough is not None and len(idx):
                given = np.array([int(rec.annotation_ids[i]) in self.rough for i in idx], dtype=bool)
                tally.excluded("no_rough_box", int((~given).sum()))
                idx = idx[given]
            if len(idx) == 0:
                tally.delivered(0)
                continue
            true = xywh_to_xyxy(rec.boxes[idx])
            try:
                rough, geometry, crops, targets, source = self._cut(rec, true, idx)
            except (ImageError, SampleError) as e:
                tally.image_failed(getattr(e, "reason", "corrupt_image"), str(e), n_boxes=len(idx))
                continue
            except Exception as e:  # noqa: BLE001
                tally.image_failed("unexpected_error", f"{rec.name}: {type(e).__name__}: {e}", n_boxes=len(idx))
                continue
            tally.delivered(len(idx))
            size_t = torch.tensor([rec.width, rec.height], dtype=torch.int64)
            for j, i in enumerate(idx):
                item = {
                    "image": crops[j],
                    "target": torch.from_numpy(targets[j]),
                    "window": torch.from_numpy(geometry.windows[j]),
                    "rough": torch.from_numpy(rough[j]),
                    "true": torch.from_numpy(true[j]),
                    "annotation_id": torch.tensor(int(rec.annotation_ids[i])),
                    "image_id": torch.tensor(rec.image_id),
                    "category_id": torch.tensor(int(rec.category_ids[i])),
                    "area": torch.tensor(float(rec.areas[i]), dtype=torch.float64),
                    "image_size": size_t,
                    "file_name": rec.file_name,
                }
                if source is not None:
                    item["source"] = source
                yield item

    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker, num_workers = worker_slot()
        tally = Tally()
        records = parsed(shard_samples(self.urls[worker::num_workers], tally, self.verify_shards), tally)
        yield from batched(self._items(records, tally), self.batch_size, _collate_eval, tally, partial=True)


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
    verify_shards: bool = True,
    keep_images: bool = False,
    rough: dict[int, np.ndarray] | None = None,
) -> EvalStream:
    """Every non-crowd box of the shards exactly once, jittered per annotation id (seed),
    cropped with ``buffer_ratio * context``; no shuffling or augmentation. With ``workers`` > 0
    the shards are dealt to workers in order (worker w reads shards w, w + n, ...), so the
    union is the same set of boxes; ``max_boxes`` keeps the first boxes delivered.
    ``verify_shards``: check each local shard against its manifest's sha256 before reading it
    (:func:`snapper.data.reader.shard_samples`); broken shards are counted in ``stats``.
    ``keep_images``: batches also carry "source", each box's decoded image and its
    decoded/original scale (full resolution), for a second pass. ``rough``: the rough box
    (x1, y1, x2, y2) of each annotation id, used instead of the jitter (:func:`load_rough_boxes`)."""
    if batch_size < 1:
        raise ConfigError("batch_size must be >= 1")
    if max_boxes is not None and max_boxes < 0:
        raise ConfigError("max_boxes must be >= 0")
    if not np.isfinite(buffer_ratio) or buffer_ratio <= 0:
        raise ConfigError(f"buffer_ratio must be a positive number, got {buffer_ratio!r}")
    dataset = _EvalDataset(expand_urls(urls), model_cfg, jitter, seed, buffer_ratio, batch_size, draft_decode,
                           verify_shards, keep_images, rough)
    return EvalStream(dataset, max(0, workers), max_boxes)


def load_rough_boxes(path: str | os.PathLike[str]) -> dict[int, np.ndarray]:
    """Annotation id -> rough box (x1, y1, x2, y2) of a COCO file (``EvalConfig.rough_file``);
    a box that is not four finite numbers with positive size is refused, naming it."""
    _, data = read_coco_json(path)
    out: dict[int, np.ndarray] = {}
    for a in data["annotations"]:
        b = a.get("bbox")
        if (not isinstance(b, list) or len(b) != 4 or not all(isinstance(v, (int, float)) for v in b)
                or not np.all(np.isfinite(b)) or b[2] <= 0 or b[3] <= 0):
            raise CocoFormatError(f"{path}: annotation {a.get('id')!r} has no usable bbox ({b!r})")
        out[int(a["id"])] = xywh_to_xyxy(np.asarray(b, dtype=np.float64)[None])[0]
    return out
