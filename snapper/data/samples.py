"""From WebDataset shard samples to decoded images: what both streams do before cutting crops.

A shard sample is one image: ``<key>.<ext>`` (the original image bytes) and ``<key>.json``
(``image_id``, ``file_name``, ``width``, ``height``, ``annotations``). Anything unusable (no
JSON, malformed JSON, no image member, a box that cannot be cropped, an undecodable image) is
counted in the stream's :class:`~snapper.data.accounting.Tally` by a short stable reason
instead of ending the epoch.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from snapper.crop import CropGeometry
from snapper.data.accounting import Tally
from snapper.data.records import IMAGE_EXTS, ImageRecord
from snapper.errors import SnapperError
from snapper.geometry import box_problem
from snapper.imageio import LoadedImage, dct_scale, load_image


class SampleError(SnapperError, ValueError):
    """A shard sample that cannot be used; ``reason`` is a short stable string for counting."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def _metadata(sample: dict[str, Any], where: str) -> dict[str, Any]:
    if "json" not in sample:
        raise SampleError("missing_json", f"{where}: sample has no .json member")
    try:
        meta = json.loads(sample["json"])
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SampleError("bad_json", f"{where}: .json is not valid JSON ({e})") from e
    if not isinstance(meta, dict):
        raise SampleError("bad_json", f"{where}: .json is not an object")
    return meta


def parse_sample(sample: dict[str, Any]) -> ImageRecord:
    """A WebDataset sample dict -> ImageRecord (``data``, ``source`` set, box arrays checked);
    SampleError names the shard and key."""
    where = f"{sample.get('__url__')}:{sample.get('__key__')}"
    meta = _metadata(sample, where)
    ext = next((e for e in IMAGE_EXTS if e in sample), None)
    if ext is None:
        raise SampleError("missing_image", f"{where}: no image member (.{'/.'.join(IMAGE_EXTS)})")
    try:
        width, height = int(meta["width"]), int(meta["height"])
        anns = meta.get("annotations") or []
        if not isinstance(anns, list):
            raise TypeError("annotations is not a list")
        rec = ImageRecord(
            image_id=int(meta["image_id"]),
            file_name=str(meta.get("file_name", sample.get("__key__"))),
            width=width,
            height=height,
            annotations=anns,
            data=sample[ext],
            source=f"{sample.get('__url__')}:{sample.get('__key__')}",
        )
        _ = (rec.boxes, rec.annotation_ids, rec.category_ids, rec.iscrowd, rec.areas)  # malformed boxes fail here
    except (KeyError, TypeError, ValueError, IndexError, OverflowError) as e:  # OverflowError: a 10**400
        raise SampleError("bad_json", f"{where}: malformed metadata ({type(e).__name__}: {str(e)[:200]})") from e
    return rec


def parsed(samples: Iterable[dict[str, Any]], tally: Tally) -> Iterator[ImageRecord]:
    """The samples that parse; the others are counted as skipped images."""
    for sample in samples:
        try:
            yield parse_sample(sample)
        except SampleError as e:
            tally.image_failed(e.reason, str(e))


def usable(rec: ImageRecord, tally: Tally, min_size: float = 0.0) -> np.ndarray:
    """Indices of the boxes that can be cropped; the others are counted by reason (crowd and
    small ones as excluded by rule, unusable ones as skipped)."""
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


def decode(rec: ImageRecord, geometry: CropGeometry, draft: bool) -> tuple[LoadedImage, tuple[float, float]]:
    """The record's image, decoded once for all its crops (JPEGs at the coarsest DCT scale the
    crops allow when ``draft``), and the exact decoded/original scale per axis."""
    li = load_image(rec.data, name=rec.name, min_scale=geometry.decode_scale() if draft else 1.0)
    if (li.width, li.height) != (rec.width, rec.height):
        raise SampleError("size_mismatch", f"{rec.name}: image is {li.width}x{li.height} but its "
                          f"metadata says {rec.width}x{rec.height}")
    h, w = li.tensor.shape[1:]
    return li, (dct_scale(w, li.width), dct_scale(h, li.height))
