"""Load a COCO instances file into a validated, fully accounted index.

Policy (one rule per case, so that nothing is lost silently):

* **Fatal** (:class:`CocoFormatError`, naming the file and the entry): the file is not JSON,
  the top level is not an object, ``images``/``annotations`` are missing or not lists, an entry
  is not an object or lacks a required key (``id``, ``file_name``, ``width``, ``height`` for
  images; ``id``, ``image_id``, ``bbox``, ``category_id`` for annotations), an id is not an
  integer in the 64-bit range the shards and streams carry, ids are duplicated, an annotation
  refers to an unknown image, ``bbox`` is not a list of 4 numbers, ``iscrowd`` is not 0/1,
  ``area`` is not a finite number, a ``file_name`` would leave the images folder or is used
  twice. These mean the file is not what it claims to be;
  guessing would silently change the dataset.
* **Counted skip** (the file is fine, one item is unusable): per annotation
  ``non_finite`` (NaN/Infinity/null coordinate), ``out_of_range`` (an integer coordinate too
  large for a 64-bit float, e.g. ``10**400``), ``degenerate`` (w or h <= 0),
  ``outside_image`` (no overlap with the image), ``too_small`` (after clipping, w or h below
  ``min_box_size``); per image (every annotation of it is skipped with the same reason)
  ``image_missing``, ``image_corrupt``, ``image_unsupported_format``, ``image_size_mismatch``
  (JSON width/height differ from the file's, after EXIF orientation: the boxes' frame is then
  unknown).
* **Kept and counted**: boxes partly outside the image are clipped to it (``clipped``); crowd
  boxes are kept with ``iscrowd=1`` (training and evaluation streams exclude them) and counted.

Accounting invariant, checked by the tests: every input annotation id is either kept (in
exactly one image record) or appears exactly once among the annotation-level skips.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
from collections import Counter
from dataclasses import dataclass, field, fields
from pathlib import Path, PurePosixPath
from typing import Any, Iterable, Literal

from PIL import Image
from pycocotools.coco import COCO

from snapper.config import SHARD_MIN_BOX_SIZE
from snapper.data.records import WRITTEN_EXTS, ImageRecord, sniff_image_format
from snapper.errors import BadFileError, ConfigError, InputNotFoundError
from snapper.geometry import box_problem
from snapper.imageio import ImageError, image_size

CheckImages = Literal["header", "decode", "none"]


class CocoFormatError(BadFileError, ValueError):
    """The annotation file is malformed; the message names the file and the offending entry."""


@dataclass
class CocoIndex:
    ann_file: str
    ann_sha256: str
    images_dir: str
    images: list[ImageRecord]  # usable images, sorted by image id
    input_annotations: dict[int, list[int]]  # every input image id -> its input annotation ids
    skipped: list[dict[str, Any]]  # {image_id, annotation_id (None = the image), reason, detail}
    clipped: list[int]  # ids of kept annotations that were clipped to the image
    min_box_size: float = SHARD_MIN_BOX_SIZE
    check_images: str = "header"

    # ------------------------------------------------------------------ accounting views
    @property
    def input_image_ids(self) -> list[int]:
        return sorted(self.input_annotations)

    @property
    def num_input_annotations(self) -> int:
        return sum(len(v) for v in self.input_annotations.values())

    @property
    def num_boxes(self) -> int:
        """Kept non-crowd annotations (what training/evaluation can use)."""
        return sum(1 for r in self.images for a in r.annotations if not a["iscrowd"])

    @property
    def num_crowd(self) -> int:
        return sum(1 for r in self.images for a in r.annotations if a["iscrowd"])

    @property
    def skip_counts(self) -> dict[str, int]:
        """Skipped annotations by reason."""
        return dict(sorted(Counter(s["reason"] for s in self.skipped if s["annotation_id"] is not None).items()))

    @property
    def image_skip_counts(self) -> dict[str, int]:
        """Skipped images by reason."""
        return dict(sorted(Counter(s["reason"] for s in self.skipped if s["annotation_id"] is None).items()))

    def counts(self) -> dict[str, int]:
        kept = sum(len(r.annotations) for r in self.images)
        skipped = sum(1 for s in self.skipped if s["annotation_id"] is not None)
        return {
            "images_input": len(self.input_annotations),
            "images": len(self.images),
            "images_skipped": sum(1 for s in self.skipped if s["annotation_id"] is None),
            "images_without_annotations": sum(1 for r in self.images if not r.annotations),
            "annotations_input": self.num_input_annotations,
            "annotations_kept": kept,
            "annotations_skipped": skipped,
            "boxes": self.num_boxes,
            "crowd": self.num_crowd,
            "clipped": len(self.clipped),
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-able (the shard flow hands an index to its manifest task as a file)."""
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["images"] = [r.to_dict() for r in self.images]
        d["input_annotations"] = [[k, v] for k, v in self.input_annotations.items()]  # JSON keys are strings
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CocoIndex":
        d = dict(d)
        d["images"] = [ImageRecord.from_dict(r) for r in d["images"]]
        d["input_annotations"] = {int(k): list(v) for k, v in d["input_annotations"]}
        return cls(**d)

    def subset(self, image_ids: Iterable[int]) -> "CocoIndex":
        """The same index restricted to ``image_ids`` (any input image id, usable or skipped)."""
        wanted = {int(i) for i in image_ids}
        unknown = wanted - set(self.input_annotations)
        if unknown:
            raise CocoFormatError(f"{self.ann_file}: image ids not in the annotation file: {sorted(unknown)[:10]}")
        images = [r for r in self.images if r.image_id in wanted]
        kept_ids = {a["id"] for r in images for a in r.annotations}
        return CocoIndex(
            ann_file=self.ann_file,
            ann_sha256=self.ann_sha256,
            images_dir=self.images_dir,
            images=images,
            input_annotations={i: v for i, v in self.input_annotations.items() if i in wanted},
            skipped=[s for s in self.skipped if s["image_id"] in wanted],
            clipped=[a for a in self.clipped if a in kept_ids],
            min_box_size=self.min_box_size,
            check_images=self.check_images,
        )


# ---------------------------------------------------------------------------- validation


INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1  # ids travel as int64 (shards, streams, Parquet)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def as_float(v: Any) -> float:
    """A JSON number as float64; an integer too large for one (JSON allows ``10**400``) is
    +-inf, so one oversized number becomes a counted reason instead of an ``OverflowError``."""
    try:
        return float(v)
    except OverflowError:
        return math.inf if v > 0 else -math.inf


def _finite(v: Any) -> bool:
    return math.isfinite(as_float(v))


def _id_ok(v: Any, low: int = INT64_MIN) -> bool:
    return _is_int(v) and low <= v <= INT64_MAX


def short(v: Any, limit: int = 40) -> str:
    """``repr(v)``, shortened for values hundreds of digits long (messages stay one line)."""
    text = repr(v)
    return text if len(text) <= limit else f"{text[:12]}...({len(text)} characters)"


def _safe_rel_path(name: str) -> bool:
    """True when ``name`` stays inside the images folder (no absolute path, no ``..``)."""
    if not name or "\x00" in name or "\\" in name:
        return False
    p = PurePosixPath(name)
    return not p.is_absolute() and ".." not in p.parts and not name.startswith("~")


def structure_problem(data: Any) -> str | None:
    """Why parsed JSON is not a COCO instances file at the top level, or None. Shared by every
    reader (datasets, rough annotations to snap), each raising its own error type."""
    if not isinstance(data, dict):
        return f"top level must be a JSON object, got {type(data).__name__}"
    for key in ("images", "annotations"):
        if key not in data:
            return f'missing required key "{key}" (not a COCO instances file)'
        if not isinstance(data[key], list):
            return f'"{key}" must be a list, got {type(data[key]).__name__}'
    return None


def _validate(data: Any, where: str) -> None:
    """Raise CocoFormatError for anything that makes the file untrustworthy (see module doc)."""

    def fail(msg: str) -> CocoFormatError:
        return CocoFormatError(f"{where}: {msg}")

    problem = structure_problem(data)
    if problem:
        raise fail(problem)
    if "categories" in data:
        if not isinstance(data["categories"], list):
            raise fail('"categories" must be a list')
        for i, cat in enumerate(data["categories"]):
            if not isinstance(cat, dict) or not _is_int(cat.get("id")):
                raise fail(f"categories[{i}] must be an object with an integer id")
            if not _id_ok(cat["id"]):
                raise fail(f"categories[{i}] id {short(cat['id'])} is not a 64-bit integer")

    image_ids: set[int] = set()
    file_names: dict[str, int] = {}
    for i, img in enumerate(data["images"]):
        if not isinstance(img, dict):
            raise fail(f"images[{i}] is not an object")
        for key in ("id", "file_name", "width", "height"):
            if key not in img:
                raise fail(f'images[{i}] (id={img.get("id")!r}) lacks "{key}"')
        iid = img["id"]
        if not _id_ok(iid, 0):
            raise fail(f"images[{i}] id {short(iid)} is not a non-negative integer below 2**63")
        if iid in image_ids:
            raise fail(f"duplicate image id {iid} (images[{i}])")
        image_ids.add(iid)
        for key in ("width", "height"):
            v = img[key]
            if not _is_number(v) or not _finite(v) or v <= 0 or v != int(v):
                raise fail(f"image id {iid}: {key} {short(v)} is not a positive integer")
        name = img["file_name"]
        if not isinstance(name, str) or not _safe_rel_path(name):
            raise fail(f"image id {iid}: file_name {name!r} is not a relative path inside the images folder")
        if name in file_names:
            raise fail(f"image id {iid}: file_name {name!r} is already used by image id {file_names[name]}")
        file_names[name] = iid

    ann_ids: set[int] = set()
    for i, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict):
            raise fail(f"annotations[{i}] is not an object")
        aid = ann.get("id")
        label = f"annotation id {aid}" if "id" in ann else f"annotations[{i}]"
        for key in ("id", "image_id", "bbox", "category_id"):
            if key not in ann:
                raise fail(f'{label} lacks "{key}"')
        if not _id_ok(aid):
            raise fail(f"annotations[{i}] id {short(aid)} is not an integer in the 64-bit range")
        if aid in ann_ids:
            raise fail(f"duplicate annotation id {aid} (annotations[{i}])")
        ann_ids.add(aid)
        if not _is_int(ann["image_id"]):
            raise fail(f"{label}: image_id {short(ann['image_id'])} is not an integer")
        if ann["image_id"] not in image_ids:
            raise fail(f"{label} refers to unknown image id {short(ann['image_id'])}")
        if not _id_ok(ann["category_id"]):
            raise fail(f"{label}: category_id {short(ann['category_id'])} is not a 64-bit integer")
        bbox = ann["bbox"]
        # null is accepted as a coordinate: JavaScript writers serialise NaN as null, so it is
        # counted as non_finite rather than rejecting the whole file.
        if not isinstance(bbox, list) or len(bbox) != 4 or not all(v is None or _is_number(v) for v in bbox):
            raise fail(f"{label}: bbox {short(bbox, 120)} is not a list of 4 numbers [x, y, w, h]")
        crowd = ann.get("iscrowd", 0)
        if crowd not in (0, 1) or isinstance(crowd, float):
            raise fail(f"{label}: iscrowd {crowd!r} is not 0 or 1")
        if "area" in ann and (not _is_number(ann["area"]) or not _finite(ann["area"])):
            raise fail(f"{label}: area {short(ann['area'])} is not a finite number")


# ---------------------------------------------------------------------------- image checks


def _check_image(path: str, width: int, height: int, mode: str) -> tuple[str | None, str | None, str]:
    """(format ext, skip reason, detail) for one image file; reason None when usable."""
    if not os.path.isfile(path):
        return None, "image_missing", f"{path}: no such file"
    if mode == "none":
        return None, None, ""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as e:
        return None, "image_corrupt", f"{path}: {e}"
    try:
        w, h = image_size(path)
    except ImageError as e:
        return None, "image_corrupt", str(e)
    ext = sniff_image_format(head)
    if ext is None:
        return None, "image_unsupported_format", f"{path}: readable but not one of {WRITTEN_EXTS}"
    if mode == "decode":
        try:
            with Image.open(path) as im:
                im.load()
        except Exception as e:  # noqa: BLE001 - any decoder failure means the file is unusable
            return ext, "image_corrupt", f"{path}: decode failed ({e})"
    if (w, h) != (width, height):
        return ext, "image_size_mismatch", f"JSON says {width}x{height}, file is {w}x{h} (after EXIF orientation)"
    return ext, None, ""


# ---------------------------------------------------------------------------- loading


def read_coco_json(path: str | os.PathLike[str], raw: bytes | None = None, name: str | None = None,
                   error: type[ValueError] | None = None) -> tuple[bytes, Any]:
    """(raw bytes, parsed JSON) of a COCO instances file, checked at the top level; problems
    raise ``error`` (default :class:`CocoFormatError`) naming the file. Shared by every reader
    (datasets, rough annotations to snap)."""
    error = error or CocoFormatError
    where = name or str(Path(path))
    if raw is None:
        try:
            raw = Path(path).read_bytes()
        except OSError as e:
            raise error(f"{where}: cannot read ({e})") from e
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise error(f"{where}: not valid JSON ({e})") from e
    except RecursionError:  # e.g. 200k nested '[': no annotation file nests that deep
        raise error(f"{where}: not usable JSON (nested too deeply)") from None
    problem = structure_problem(data)
    if problem:
        raise error(f"{where}: {problem}")
    return raw, data


def _read_json(ann_file: str | os.PathLike[str]) -> tuple[str, bytes, Any]:
    """(file name for messages, raw bytes, parsed and validated JSON)."""
    where = str(Path(ann_file))
    raw, data = read_coco_json(ann_file)
    _validate(data, where)
    return where, raw, data


def _kept_box(a: dict[str, Any], width: int, height: int,
              min_box_size: float) -> tuple[dict[str, Any] | None, str | None, str, bool]:
    """(the annotation as kept, or None; skip reason; detail; whether it was clipped)."""
    bbox = [math.nan if v is None else as_float(v) for v in a["bbox"]]
    if any(_is_int(v) and not math.isfinite(b) for v, b in zip(a["bbox"], bbox)):
        return None, "out_of_range", f"bbox {short(a['bbox'], 120)}: a number too large for a 64-bit float", False
    problem = box_problem(bbox, width, height)
    if problem is not None:
        return None, problem, f"bbox {a['bbox']!r} in {width}x{height}", False
    x, y, w, h = bbox
    x0, y0, x1, y1 = max(x, 0.0), max(y, 0.0), min(x + w, width), min(y + h, height)
    was_clipped = (x0, y0, x1, y1) != (x, y, x + w, y + h)
    if was_clipped:
        x, y, w, h = x0, y0, x1 - x0, y1 - y0
    if w < min_box_size or h < min_box_size:
        return None, "too_small", f"bbox {[x, y, w, h]!r} below {min_box_size} px", False
    area = float(a["area"]) if "area" in a else w * h
    kept = {"id": a["id"], "bbox": [x, y, w, h], "category_id": a["category_id"],
            "iscrowd": int(a.get("iscrowd", 0)), "area": area}
    return kept, None, "", was_clipped


@dataclass
class _Indexer:
    """Collects records and every skip while walking the images in id order."""

    images_root: str
    min_box_size: float
    check_images: str
    records: list[ImageRecord] = field(default_factory=list)
    input_annotations: dict[int, list[int]] = field(default_factory=dict)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    clipped: list[int] = field(default_factory=list)

    def skip(self, image_id: int, ann_id: int | None, reason: str, detail: str) -> None:
        self.skipped.append({"image_id": image_id, "annotation_id": ann_id, "reason": reason, "detail": detail})

    def add(self, img: dict[str, Any], anns: list[dict[str, Any]]) -> None:
        image_id = img["id"]
        self.input_annotations[image_id] = [a["id"] for a in anns]
        width, height = int(img["width"]), int(img["height"])
        path = os.path.join(self.images_root, img["file_name"])
        ext, reason, detail = _check_image(path, width, height, self.check_images)
        if reason is not None:
            self.skip(image_id, None, reason, detail)
            for a in anns:
                self.skip(image_id, a["id"], reason, f"image {img['file_name']}")
            return
        kept: list[dict[str, Any]] = []
        for a in anns:
            ann, reason, detail, was_clipped = _kept_box(a, width, height, self.min_box_size)
            if ann is None:
                self.skip(image_id, a["id"], reason, detail)  # type: ignore[arg-type]
                continue
            if was_clipped:
                self.clipped.append(a["id"])
            kept.append(ann)
        self.records.append(ImageRecord(image_id=image_id, file_name=img["file_name"], width=width, height=height,
                                        annotations=kept, path=path, format=ext))


def load_coco(
    ann_file: str | os.PathLike[str],
    images_dir: str | os.PathLike[str],
    min_box_size: float = SHARD_MIN_BOX_SIZE,
    check_images: CheckImages = "header",
) -> CocoIndex:
    """Validate and index a COCO instances file.

    ``check_images``: ``"header"`` opens each image header (existence, format, size; cheap),
    ``"decode"`` also decodes every image (catches truncated files; slow), ``"none"`` only checks
    that files exist (format problems then surface when a shard is written).
    """
    if check_images not in ("header", "decode", "none"):
        raise ConfigError(f"check_images must be header|decode|none, got {check_images!r}")
    if not (isinstance(min_box_size, (int, float)) and math.isfinite(min_box_size) and min_box_size >= 0):
        raise ConfigError(f"min_box_size must be a finite number >= 0, got {min_box_size!r}")
    where, raw, data = _read_json(ann_file)
    if not Path(images_dir).is_dir():  # else every image would be skipped as image_missing
        raise InputNotFoundError(f"images folder {images_dir} does not exist (or is not a folder)")
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress to stdout
        coco.createIndex()
    ix = _Indexer(os.path.abspath(os.fspath(images_dir)), min_box_size, check_images)
    for image_id in sorted(coco.imgs):
        ix.add(coco.imgs[image_id], sorted(coco.imgToAnns.get(image_id, []), key=lambda a: a["id"]))
    return CocoIndex(
        ann_file=where,
        ann_sha256=hashlib.sha256(raw).hexdigest(),
        images_dir=ix.images_root,
        images=ix.records,
        input_annotations=ix.input_annotations,
        skipped=ix.skipped,
        clipped=sorted(ix.clipped),
        min_box_size=float(min_box_size),
        check_images=check_images,
    )
