"""Reading the input: a rough COCO file parsed once per process, the box checks that need no
pixels, and the deterministic chunk plan.

One bad annotation must never stop the others, so only what makes the whole file unusable
(not JSON, no ``images``/``annotations`` lists, missing or duplicated ids) raises; every other
problem becomes a per-annotation kept reason later.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import threading
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from snapper.batch.schema import BatchInputError
from snapper.config import BatchConfig
from snapper.data.coco import INT64_MAX, INT64_MIN, as_float, read_coco_json, short


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


def is_int(v: Any) -> bool:
    """A JSON integer (``True`` is an int to Python, not to COCO)."""
    return isinstance(v, int) and not isinstance(v, bool)


def is_int64(v: Any) -> bool:
    """A JSON integer that fits the 64-bit id columns of ``boxes.parquet``."""
    return is_int(v) and INT64_MIN <= v <= INT64_MAX


def _id_problem(where: str, entry: Any) -> str | None:
    """Why an entry has no usable id (the file is then refused: results are accounted by id)."""
    if not isinstance(entry, dict) or not is_int(entry.get("id")):
        return f"{where} must be an object with an integer 'id', got {str(entry)[:80]}"
    if not is_int64(entry["id"]):
        return f"{where} id {short(entry['id'])} does not fit a 64-bit integer"
    return None


def _index_images(name: str, entries: list[Any]) -> tuple[dict[int, dict[str, Any]], list[int]]:
    """Images by id. An image whose id does not fit 64 bits is left out of the index (its
    annotations are then kept as ``unknown_image``, saying why) rather than refusing the file."""
    images: dict[int, dict[str, Any]] = {}
    order: list[int] = []
    seen: set[int] = set()
    for i, im in enumerate(entries):
        if not isinstance(im, dict) or not is_int(im.get("id")):
            raise BatchInputError(f"{name}: images[{i}] must be an object with an integer 'id', got {str(im)[:80]}")
        if im["id"] in seen:
            raise BatchInputError(f"{name}: duplicate image id {short(im['id'])} (images[{i}])")
        seen.add(im["id"])
        if is_int64(im["id"]):
            images[im["id"]] = im
            order.append(im["id"])
    return images, order


def _index_annotations(name: str, entries: list[Any],
                       images: dict[int, dict[str, Any]]) -> tuple[dict[int, list[int]], list[int]]:
    seen: set[int] = set()
    by_image: dict[int, list[int]] = defaultdict(list)
    orphans: list[int] = []
    for i, a in enumerate(entries):
        problem = _id_problem(f"annotations[{i}]", a)
        if problem:
            raise BatchInputError(f"{name}: {problem}")
        if a["id"] in seen:
            raise BatchInputError(f"{name}: duplicate annotation id {a['id']} (annotations[{i}]); "
                                  "results are accounted by id, so ids must be unique")
        seen.add(a["id"])
        image_id = a.get("image_id")
        if is_int(image_id) and image_id in images:
            by_image[image_id].append(i)
        else:
            orphans.append(i)
    return dict(by_image), orphans


def parse_rough(path: str | os.PathLike[str], raw: bytes | None = None) -> RoughInput:
    """Parse and check a rough COCO file.

    Fatal (:class:`BatchInputError`): not JSON, not an object, ``images``/``annotations``
    missing or not lists, an entry that is not an object, a missing/non-integer/duplicated
    ``id``, an annotation id outside the 64-bit range (results are accounted by id).
    Everything else about an annotation (its box, its image) is a per-annotation
    reason decided later, because one bad box must not stop the other boxes.
    """
    name = str(path)
    raw, data = read_coco_json(path, raw, name, error=BatchInputError)
    images, order = _index_images(name, data["images"])
    by_image, orphans = _index_annotations(name, data["annotations"], images)
    return RoughInput(name, hashlib.sha256(raw).hexdigest(), data, images, order, by_image, orphans)


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


# --------------------------------------------------------------------- box checks (no pixels)


def finite_box(bbox: Any) -> tuple[str | None, np.ndarray | None]:
    """(kept reason, xywh) for the box-only checks that need no image."""
    if bbox is None:
        return "missing_bbox", None
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
        return "malformed_bbox", None
    if any(v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))) for v in bbox):
        return "malformed_bbox", None
    b = np.array([np.nan if v is None else as_float(v) for v in bbox], dtype=np.float64)
    if not np.isfinite(b).all():
        too_big = any(is_int(v) and not math.isfinite(x) for v, x in zip(bbox, b))
        return ("out_of_range" if too_big else "non_finite"), b
    return None, b


def rough_numbers(bbox: Any) -> list[float]:
    """The input bbox as 4 floats for the table (NaN where it has no number)."""
    if isinstance(bbox, (list, tuple)) and len(bbox) == 4:
        return [as_float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan for v in bbox]
    return [math.nan] * 4


# ------------------------------------------------------------------------------ chunk plan


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
    Annotations of unknown images are in no chunk; :func:`snapper.batch.merge.merge_chunks`
    accounts for them.
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
