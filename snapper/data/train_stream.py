"""The training stream: random jitter + crop on the fly from WebDataset shards.

Each image is decoded once for all the boxes sampled from it (the decode is the largest cost
of a crop, so amortising it is where the throughput comes from), JPEGs at a reduced DCT scale
when every crop of the image is downscaled anyway; crops are cut by
:meth:`snapper.crop.CropGeometry.cut` (the fast CPU kernel), augmented, and shuffled into
batches. Shards are resampled by default so no rank ever runs dry in DDP; with
``resampled=False`` every shard is read exactly once per epoch, split over ranks and workers
(and the split must not leave any rank x worker without a shard). ``crop_on="device"`` leaves
cutting to :class:`DeviceCropper` on the training device; workers then only decode.

Shards are read by :func:`snapper.data.reader.shard_samples` (member names checked, local
shards checked against their manifest's sha256 unless ``data.verify_shards`` is off, a
broken shard counted once with what it did not deliver).

Reproducibility: one generator per (seed, data seed, rank, worker, epoch) draws, per image and
in this order, the boxes, their jitter, then the flips and colour factors. The demo's numbers
depend on that order.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

from snapper.config import TrainConfig
from snapper.crop import CropGeometry, crop_images, to_uint8
from snapper.data.accounting import StreamStats, Tally
from snapper.data.augment import augment, draw_augment, hflip_targets
from snapper.data.iterators import batched, shuffle, worker_slot
from snapper.data.manifest import count_from_manifests, count_images, expand_urls
from snapper.data.reader import shard_samples
from snapper.data.records import ImageRecord
from snapper.data.samples import SampleError, decode, parsed, usable
from snapper.errors import ConfigError
from snapper.geometry import MIN_COVERAGE, context_for, crop_coverage, edge_offsets, jitter_boxes, xywh_to_xyxy
from snapper.imageio import ImageError, LoadedImage
from snapper.zoom import training_strips

log = logging.getLogger(__name__)

MAX_CONSECUTIVE_FAILURES = 200  # a training stream that delivers nothing is broken, not unlucky


@dataclass
class _Crop:
    image: torch.Tensor  # (3, S, S) uint8
    target: torch.Tensor  # (4,) float32
    image_id: int
    annotation_id: int
    strip: torch.Tensor | None = None  # (3, L, S) uint8: a zoom-in strip of this box (model.zoom)
    strip_target: float = 0.0  # its true edge, input px across


@dataclass
class _Prepared:
    """One image ready for cutting: decoded once, its sampled boxes' crops and targets."""

    image: LoadedImage
    scale: tuple[float, float]  # decoded / original pixels per axis
    geometry: CropGeometry
    targets: torch.Tensor  # (k, 4) float32, input px
    chosen: np.ndarray  # indices of the sampled boxes in the record
    true: np.ndarray  # (k, 4) the sampled boxes, xyxy original px


def _collate_crops(items: list[_Crop]) -> dict[str, Any]:
    out = {
        "image": torch.stack([c.image for c in items]),
        "target": torch.stack([c.target for c in items]),
        "image_id": torch.tensor([c.image_id for c in items], dtype=torch.int64),
        "annotation_id": torch.tensor([c.annotation_id for c in items], dtype=torch.int64),
    }
    with_strip = [c for c in items if c.strip is not None]
    if with_strip:
        out["strip"] = torch.stack([c.strip for c in with_strip])
        out["strip_target"] = torch.tensor([c.strip_target for c in with_strip], dtype=torch.float32)
    return out


def _collate_images(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {"images": items}


def _too_few_shards(n: int, world_size: int, num_workers: int) -> str:
    return (f"{n} shard(s) for {world_size} rank(s) x {num_workers} worker(s): with resampled=False every "
            f"rank x worker needs at least one shard. Write more, smaller shards, use fewer workers, or "
            f"set data.resampled=true.")


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

    def _shards(self, rng: np.random.Generator, worker: int, num_workers: int) -> Iterator[dict[str, str]]:
        if self.cfg.data.resampled:
            while True:
                yield {"url": self.urls[int(rng.integers(len(self.urls)))]}
        # Same permutation on every rank (seeded by epoch only), then rank, then worker slice:
        # the slices partition the shard list, so each shard is read exactly once per epoch.
        need = self.world_size * num_workers
        if len(self.urls) < need:
            raise ConfigError(_too_few_shards(len(self.urls), self.world_size, num_workers))
        order = np.random.default_rng([self.cfg.seed, self.cfg.data.seed, self.epoch]).permutation(len(self.urls))
        for i in order[self.rank :: self.world_size][worker::num_workers]:
            yield {"url": self.urls[int(i)]}

    def _prepare(self, rec: ImageRecord, rng: np.random.Generator, tally: Tally) -> _Prepared | None:
        """Sample boxes, jitter, decode once; None when the image gives nothing."""
        cfg = self.cfg
        chosen_from = usable(rec, tally, cfg.data.min_box_size)
        if len(chosen_from) == 0:
            return None
        k = min(cfg.data.boxes_per_image, len(chosen_from))
        chosen = np.sort(rng.choice(chosen_from, size=k, replace=False))
        true = xywh_to_xyxy(rec.boxes[chosen])
        rough = jitter_boxes(true, rec.width, rec.height, rng, cfg.jitter)
        lo, hi = cfg.data.buffer_ratio_min, cfg.data.buffer_ratio_max
        ratio = rng.uniform(lo, hi, size=k) if hi > lo else lo  # no draw at a fixed ratio: same stream
        geometry = CropGeometry.around(rough, cfg.model.input_size, cfg.model.context, ratio)
        try:
            # zoom strips read ~1 original px per input px: no draft decode for them
            image, scale = decode(rec, geometry, cfg.data.draft_decode and not cfg.model.zoom)
        except (ImageError, SampleError) as e:
            tally.image_failed(getattr(e, "reason", "corrupt_image"), str(e), n_boxes=k)
            return None
        targets = torch.from_numpy(geometry.targets(true).astype(np.float32))
        return _Prepared(image, scale, geometry, targets, chosen, true)

    def _drawn(self, records: Iterable[ImageRecord], rng: np.random.Generator,
               tally: Tally) -> Iterator[tuple[ImageRecord, _Prepared, torch.Tensor, torch.Tensor | None]]:
        """Each usable image, decoded, with its augmentation draws; a bad image is counted and
        skipped, never raised (one bad image must not end the epoch)."""
        for rec in records:
            try:
                prep = self._prepare(rec, rng, tally)
                if prep is None:
                    continue
                flip, color = draw_augment(rng, len(prep.chosen), self.cfg.data)
            except Exception as e:  # noqa: BLE001
                tally.image_failed("unexpected_error", f"{rec.name}: {type(e).__name__}: {e}")
                continue
            yield rec, prep, flip, color

    def _strips(self, prep: _Prepared, color: torch.Tensor | None,
                rng: np.random.Generator) -> dict[int, tuple[torch.Tensor, float]]:
        """Zoom-in strips (model.zoom): box index -> (uint8 strip, target). Draws from ``rng``
        only for a zoom model, so other runs' streams are unchanged."""
        if not self.cfg.model.zoom:
            return {}
        boxes, geo = training_strips(prep.true, prep.geometry, self.cfg.model, self.cfg.data.zoom_noise, rng)
        if len(boxes) == 0:
            return {}
        strips = geo.cut(prep.image.tensor, prep.scale)
        strips = to_uint8(augment(strips, torch.zeros(len(boxes), 4), None,
                                  None if color is None else color[torch.from_numpy(boxes)])[0])
        targets = geo.targets(prep.true[boxes])
        return {int(b): (strips[j], float(targets[j])) for j, b in enumerate(boxes)}

    def _crops(self, records: Iterable[ImageRecord], rng: np.random.Generator, tally: Tally) -> Iterator[_Crop]:
        size = self.cfg.model.input_size
        for rec, prep, flip, color in self._drawn(records, rng, tally):
            try:
                crops = prep.geometry.cut(prep.image.tensor, prep.scale, mirror=flip)  # mirrored while cut
                targets = torch.where(flip.view(-1, 1), hflip_targets(prep.targets, size), prep.targets)
                crops = to_uint8(augment(crops, targets, None, color)[0])
                strips = self._strips(prep, color, rng)
            except Exception as e:  # noqa: BLE001
                tally.image_failed("unexpected_error", f"{rec.name}: {type(e).__name__}: {e}")
                continue
            tally.delivered(len(prep.chosen))
            for j, i in enumerate(prep.chosen):
                strip, strip_target = strips.get(j, (None, 0.0))
                yield _Crop(crops[j], targets[j], rec.image_id, int(rec.annotation_ids[i]), strip, strip_target)

    def _images(self, records: Iterable[ImageRecord], rng: np.random.Generator,
                tally: Tally) -> Iterator[dict[str, Any]]:
        for rec, prep, flip, color in self._drawn(records, rng, tally):
            tally.delivered(len(prep.chosen))
            yield {
                "image": prep.image.tensor,
                "scale": prep.scale,
                "window": prep.geometry.windows,
                "target": prep.targets,
                "flip": flip,
                "color": color,
                "image_id": rec.image_id,
                "annotation_id": torch.from_numpy(rec.annotation_ids[prep.chosen]),
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
        worker, num_workers = worker_slot()
        rng = np.random.default_rng([cfg.seed, cfg.data.seed, self.rank, worker, self.epoch])
        tally = Tally(MAX_CONSECUTIVE_FAILURES if cfg.data.resampled else None)
        samples = shard_samples(self._shards(rng, worker, num_workers), tally, cfg.data.verify_shards)
        per_image_buf = max(1, cfg.data.shuffle_buffer // max(1, cfg.data.boxes_per_image))
        records = shuffle(parsed(samples, tally), per_image_buf, rng)
        partial = not cfg.data.resampled
        if cfg.data.crop_on == "device":
            per_batch = max(1, cfg.batch_size // max(1, cfg.data.boxes_per_image))
            batches = batched(self._images(records, rng, tally), per_batch, _collate_images, tally, partial)
        else:
            crops = shuffle(self._crops(records, rng, tally), cfg.data.shuffle_buffer, rng)
            batches = batched(crops, cfg.batch_size, _collate_crops, tally, partial)
        yield from batches


class DeviceCropper:
    """Cuts, augments and batches crops on the training device from a ``crop_on="device"`` batch
    (the loader workers only decode, at the draft scale, and draw the random parameters).
    Crops are cut with ``roi_align`` (:func:`snapper.crop.crop_images`) on whatever device
    that is, so device mode gives the same pixels everywhere."""

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
            "image": to_uint8(torch.cat(crops)),
            "target": torch.cat(targets),
            "image_id": torch.cat(image_ids).to(device),
            "annotation_id": torch.cat(ann_ids).to(device),
        }


def _check(cfg: TrainConfig, rank: int, world_size: int) -> None:
    """What the config alone cannot say (its values' ranges are checked when it is built,
    :mod:`snapper.config`): this rank, and shards to read."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in a world of size {world_size}")
    if not cfg.data.train_shards:
        raise ConfigError("data.train_shards is empty: give shard paths, globs or pipe: URLs")
    if cfg.jitter.mode == "empirical":  # measured noise the crops cannot hold teaches edges the model cannot see
        covered = crop_coverage(edge_offsets(cfg.jitter.noise_file), cfg.model.context)  # type: ignore[arg-type]
        if covered < MIN_COVERAGE and rank == 0:
            log.warning("jitter.noise_file: only %.1f%% of the measured boxes have the true box inside a crop of "
                        "model.context=%g; a larger context (e.g. %.2f) keeps more of them", 100 * covered,
                        cfg.model.context, context_for(edge_offsets(cfg.jitter.noise_file)))  # type: ignore[arg-type]


def _epoch_crops(cfg: TrainConfig, urls: list[str]) -> int:
    """Crops per resampled epoch over all ranks: ``data.epoch_samples``, else every image's
    ``boxes_per_image`` (images counted from local tar headers or the manifests)."""
    data = cfg.data
    if data.epoch_samples is not None:
        return data.epoch_samples
    n_images = count_images(urls)
    if n_images is None:
        n_images = count_from_manifests([str(u) for u in data.train_shards])
    if n_images is None:
        raise ConfigError("data.epoch_samples must be set when shards are remote and not given by their manifest")
    return n_images * data.boxes_per_image


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
        _check(cfg, rank, world_size)
        data = cfg.data
        self.cfg = cfg
        self.urls = expand_urls(data.train_shards)
        self.num_workers = max(0, data.workers)
        nw = max(1, self.num_workers)
        self.batches_per_epoch: int | None = None
        per_worker = None
        if data.resampled:
            per_worker = max(1, math.ceil(_epoch_crops(cfg, self.urls) / (world_size * cfg.batch_size * nw)))
            self.batches_per_epoch = per_worker * nw
        elif len(self.urls) < world_size * nw:
            raise ConfigError(_too_few_shards(len(self.urls), world_size, nw))
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
