"""What every format reader and writer shares: the error, the sidecar that remembers where
each box came from, the COCO builder with stable ids, safe XML parsing, number formatting
and the per-box outcome a writer puts back.

Every reader turns its format into a rough COCO dict (``images``, ``categories``,
``annotations`` with pixel ``[x, y, w, h]`` in the project's continuous convention: pixel i
covers [i, i+1)) plus a :class:`Sidecar`. The COCO dict goes through
:func:`snapper.batch.batch_snap` unchanged, so every accounting guarantee of the batch path
holds; the sidecar maps each annotation id back to its source (file, line, object index,
worker), which is what lets a writer put the snapped box back into the source file
non-destructively.

Why standard-library parsers and not ``labelformat``/``globox`` (both install from PyPI):
their writers regenerate files from their own models, dropping every element and attribute
they do not model (``difficult``/``truncated``, CVAT attributes, polygons, Ground Truth
metadata), so they cannot write a snapped file back next to the original content; their
readers take VOC corners verbatim (no 1-based inclusive conversion), report problems as a
generic "syntax error" without the object, and neither reads Ground Truth manifests. The
formats are small, so a parser per format is shorter than adapting either model.
"""

from __future__ import annotations

import json
import math
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from snapper.atomic import atomic_write_with
from snapper.batch.schema import BatchInputError
from snapper.geometry import EDGE_NAMES

# Declarations VOC and CVAT files never need; refusing them rules out entity tricks
# (external entities, exponential expansion) whatever the XML library would do with them.
_XML_DECLS = re.compile(rb"<!\s*(DOCTYPE|ENTITY)", re.IGNORECASE)


class FormatError(BatchInputError):
    """An input file that cannot be read as its format; the message names the file (and the
    line or object). A ``ValueError``, so the commands print it as one line, exit status 2."""


@dataclass
class Sidecar:
    """Where each annotation came from, so the result can be written back into the source.

    ``records`` maps a COCO annotation id to a small JSON-able dict (file, line, object
    index, worker, object id: whatever the format needs); ``extra`` holds per-input facts
    (the label attribute, class names, consolidated objects). Plain JSON both ways, so it can
    be saved beside the converted input.
    """

    format: str
    source: str
    records: dict[int, dict[str, Any]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"format": self.format, "source": self.source, "extra": self.extra,
                "records": {str(k): v for k, v in self.records.items()}}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Sidecar":
        return cls(str(d["format"]), str(d["source"]), {int(k): v for k, v in d["records"].items()},
                   dict(d.get("extra") or {}))


class CocoBuilder:
    """A rough COCO dict built in reading order: image and annotation ids 1, 2, ... so the same
    input always gives the same ids (and the same chunk keys, which is what resume needs)."""

    def __init__(self) -> None:
        self.images: list[dict[str, Any]] = []
        self.annotations: list[dict[str, Any]] = []
        self.categories: dict[str, int] = {}
        self.records: dict[int, dict[str, Any]] = {}

    def category(self, name: str, cid: int | None = None) -> int:
        """The id of a category name (given, e.g. YOLO's index + 1, or by first appearance)."""
        if name not in self.categories:
            used = set(self.categories.values())
            self.categories[name] = cid if cid is not None and cid not in used else max(used, default=0) + 1
        return self.categories[name]

    def image(self, file_name: str, width: Any = None, height: Any = None) -> int:
        """An image entry; width/height only when they are positive integers (else the batch
        path reads the size from the file)."""
        entry: dict[str, Any] = {"id": len(self.images) + 1, "file_name": file_name}
        w, h = as_size(width), as_size(height)
        if w and h:
            entry.update(width=w, height=h)
        self.images.append(entry)
        return entry["id"]

    def annotation(self, image_id: int, bbox: Any, category: str, record: dict[str, Any], **extra: Any) -> int:
        ann_id = len(self.annotations) + 1
        bbox_ok = is_box(bbox)
        ann = {"id": ann_id, "image_id": image_id, "category_id": self.category(category), "bbox": bbox,
               "area": round(bbox[2] * bbox[3], 6) if bbox_ok else 0.0, "iscrowd": 0, **extra}
        self.annotations.append(ann)
        self.records[ann_id] = record
        return ann_id

    def coco(self, description: str) -> dict[str, Any]:
        cats = sorted(self.categories.items(), key=lambda kv: kv[1])
        return {"info": {"description": description}, "images": self.images,
                "categories": [{"id": i, "name": n} for n, i in cats], "annotations": self.annotations}


def as_size(v: Any) -> int | None:
    """A positive integer image side from a number or text, else None."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return int(f) if math.isfinite(f) and f >= 1 and f == int(f) else None


def number(text: Any) -> float | None:
    """A coordinate from XML text or JSON: a float (NaN/inf included: the batch path counts
    them as ``non_finite``), None when it is not a number at all."""
    if isinstance(text, bool):
        return None
    try:
        return float(text.strip() if isinstance(text, str) else text)
    except (TypeError, ValueError, OverflowError):
        return None


def raw_box(values: list[Any]) -> list[Any] | None:
    """Four raw coordinates as a bbox the batch path will keep with a reason: None when all
    are missing (``missing_bbox``), the values as given otherwise (``malformed_bbox``)."""
    return None if all(v is None for v in values) else [v if v is None else str(v) for v in values]


def fmt(v: float, digits: int = 9) -> str:
    """A coordinate as text: integers without a fraction, others rounded to ``digits``
    decimals in the shortest form (float noise such as ``14.300000000000001`` goes away,
    while a round trip stays exact far below 1e-6 px)."""
    r = round(float(v), digits)
    return str(int(r)) if r == int(r) else repr(r)


# ----------------------------------------------------------------------------------- XML


def parse_xml(path: str | Path) -> ET.Element:
    """The root of an XML file, comments kept (they are written back). Files with a DOCTYPE
    or ENTITY declaration are refused: VOC and CVAT never need one, so nothing is expanded."""
    name = str(path)
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise FormatError(f"{name}: cannot read ({e.strerror or e})") from e
    if _XML_DECLS.search(data):
        raise FormatError(f"{name}: XML with a DOCTYPE or ENTITY declaration is refused (never needed here)")
    parser = ET.XMLParser(target=ET.TreeBuilder(insert_comments=True))
    try:
        parser.feed(data)
        return parser.close()
    except ET.ParseError as e:  # the message says the line and column
        raise FormatError(f"{name}: not well-formed XML ({e})") from None


def write_xml(root: ET.Element, path: Path) -> Path:
    """An XML tree, indented, written atomically."""
    ET.indent(root)
    return atomic_write_with(path, lambda tmp: ET.ElementTree(root).write(tmp, encoding="utf-8",
                                                                          xml_declaration=True))


def sub(parent: ET.Element, tag: str, text: Any = None) -> ET.Element:
    el = ET.SubElement(parent, tag)
    if text is not None:
        el.text = str(text)
    return el


def replace_child(parent: ET.Element, tag: str) -> ET.Element:
    """A fresh ``<tag>`` child (an old one from an earlier snapper run is removed)."""
    for old in parent.findall(tag):
        parent.remove(old)
    return ET.SubElement(parent, tag)


# ------------------------------------------------------------------------- result per box


def is_box(bbox: Any) -> bool:
    return (isinstance(bbox, list) and len(bbox) == 4
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in bbox))


def edge_change(rough: Any, new: Any) -> dict[str, float] | None:
    """How far each edge moved (new - rough, px; left, top, right, bottom)."""
    if not (is_box(rough) and is_box(new)):
        return None
    r = (rough[0], rough[1], rough[0] + rough[2], rough[1] + rough[3])
    n = (new[0], new[1], new[0] + new[2], new[1] + new[3])
    return {e: round(b - a, 3) + 0.0 for e, a, b in zip(EDGE_NAMES, r, n)}  # + 0.0: no "-0.0"


@dataclass
class Outcome:
    """One annotation of the snapped COCO output, as a writer needs it: the main box (the
    snapped one, or the input one when kept or merely converted) and what is kept beside it."""

    bbox: Any
    category_id: Any
    status: str | None  # None: converted only, never snapped
    reason: str | None = None
    detail: str | None = None
    rough: Any = None
    change: dict[str, float] | None = None
    confidence: dict[str, Any] | None = None
    needs_review: bool = False
    review: list[str] = field(default_factory=list)

    @property
    def snapped(self) -> bool:
        return self.status == "snapped"

    def extras(self) -> dict[str, Any]:
        """The JSON-able facts kept beside the main box (empty when not snapped at all)."""
        if self.status is None:
            return {}
        return {"status": self.status, "reason": self.reason, "detail": self.detail, "rough_bbox": self.rough,
                "change_px": self.change, "confidence": self.confidence, "needs_review": self.needs_review,
                "review": self.review}


def outcome(ann: dict[str, Any]) -> Outcome:
    s = ann.get("snapper")
    if not isinstance(s, dict):
        return Outcome(ann.get("bbox"), ann.get("category_id"), None, rough=ann.get("bbox"))
    rough = s.get("rough_bbox")
    return Outcome(ann.get("bbox"), ann.get("category_id"), s.get("status"), s.get("reason"), s.get("detail"),
                   rough, edge_change(rough, ann.get("bbox")) if s.get("status") == "snapped" else None,
                   s.get("confidence"), bool(s.get("needs_review")), list(s.get("review") or []))


def by_id(coco: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """The output annotations by id (what writers look records up in)."""
    return {a["id"]: a for a in coco.get("annotations", [])}


def group_by_image(coco: dict[str, Any]) -> dict[Any, list[dict[str, Any]]]:
    """Annotations per image id, every image present; an annotation whose image is not in
    ``images`` cannot be written to a per-image format and is refused rather than dropped."""
    out: dict[Any, list[dict[str, Any]]] = {im["id"]: [] for im in coco.get("images", [])}
    for a in coco.get("annotations", []):
        if a.get("image_id") not in out:
            raise FormatError(f"annotation {a.get('id')}: image_id {a.get('image_id')!r} is not in 'images', "
                              "so it cannot be written per image")
        out[a["image_id"]].append(a)
    return out


def category_names(coco: dict[str, Any]) -> dict[Any, str]:
    return {c["id"]: str(c.get("name", c["id"])) for c in coco.get("categories", [])}


def dumps_line(obj: Any) -> str:
    """One JSON line (manifests): compact, NaN written as JSON's extension like the COCO output."""
    return json.dumps(obj, separators=(",", ":"))
