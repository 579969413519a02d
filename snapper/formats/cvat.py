"""CVAT for images 1.1 XML: one file, ``<annotations>`` with ``<image id name width height>``
elements holding ``<box label xtl ytl xbr ybr occluded ...>``.

CVAT's corners are continuous pixel coordinates (the same frame as this project's), so
``[x, y, w, h] = [xtl, ytl, xbr - xtl, ybr - ytl]`` and back, exactly.

Only ``<box>`` shapes of ``<image>`` elements are snapped; polygons, points, tags and the
``<meta>`` block are not boxes and are written back untouched. Video tracks (``<track>``,
CVAT for video) are refused naming the file rather than silently skipped. A file that is not
well-formed XML, an ``<image>`` without ``name`` or a box without ``label`` is refused naming
the file and the image/box; a missing or non-numeric corner is passed on so the batch path
keeps that box with a reason.

Writing back (non-destructive): the source is re-read, a snapped box's corners become the
snapped ones and every snapped or kept box gains ``snapper_*`` attributes (``snapper_status``,
``snapper_reason``, ``snapper_needs_review``, ``snapper_review``, ``snapper_rough`` and
``snapper_change`` as ``left,top,right,bottom``, ``snapper_confidence``). CVAT's importer reads
the attributes it knows by name and leaves others alone.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from snapper.formats.common import (
    CocoBuilder,
    FormatError,
    Outcome,
    Sidecar,
    by_id,
    category_names,
    fmt,
    group_by_image,
    is_box,
    number,
    outcome,
    parse_xml,
    raw_box,
    sub,
    write_xml,
)
from snapper.geometry import EDGE_NAMES

NAME = "cvat"
CORNERS = ("xtl", "ytl", "xbr", "ybr")
DEFAULT_FILE = "annotations.xml"


def _box(el: ET.Element) -> Any:
    texts = [el.get(c) for c in CORNERS]
    v = [number(t) for t in texts]
    if any(x is None for x in v):
        return raw_box(texts)
    return [v[0], v[1], v[2] - v[0], v[3] - v[1]]  # type: ignore[operator]


def _attributes(el: ET.Element) -> dict[str, Any]:
    """``occluded`` and the label attributes, kept on the COCO annotation."""
    attrs: dict[str, Any] = {a.get("name", ""): a.text for a in el.findall("attribute")}
    if el.get("occluded") is not None:
        attrs["occluded"] = el.get("occluded") == "1"
    return attrs


def _root(path: Path) -> ET.Element:
    root = parse_xml(path)
    if root.tag != "annotations":
        raise FormatError(f"{path}: root element is <{root.tag}>, a CVAT for images file has <annotations>")
    if root.find("track") is not None:
        raise FormatError(f"{path}: has <track> elements (CVAT for video); export as 'CVAT for images 1.1'")
    return root


def read(path: str | Path, images_dir: str | Path | None = None, **_: Any) -> tuple[dict[str, Any], Sidecar]:
    """A CVAT for images 1.1 file -> (rough COCO dict, sidecar)."""
    path = Path(path)
    if not path.is_file():
        raise FormatError(f"{path}: no such file (CVAT for images is one XML file)")
    root = _root(path)
    b = CocoBuilder()
    for k, im in enumerate(root.findall("image")):
        name = (im.get("name") or "").strip()
        if not name:
            raise FormatError(f"{path}: <image> {k + 1} (id {im.get('id')}) has no name")
        image_id = b.image(name, im.get("width"), im.get("height"))
        for j, el in enumerate(im.findall("box")):
            label = (el.get("label") or "").strip()
            if not label:
                raise FormatError(f"{path}: image {name!r}, box {j + 1} has no label")
            attrs = _attributes(el)
            b.annotation(image_id, _box(el), label, {"image": k, "box": j},
                         **({"attributes": attrs} if attrs else {}))
    return b.coco(f"CVAT {path}"), Sidecar(NAME, str(path), b.records)


# ------------------------------------------------------------------------------- writing


def _edges(values: dict[str, Any] | None, digits: int) -> str:
    return ",".join("" if not values or values.get(e) is None else fmt(values[e], digits) for e in EDGE_NAMES)


def apply(el: ET.Element, o: Outcome) -> None:
    """Put one outcome into a ``<box>``: snapped corners, ``snapper_*`` attributes beside."""
    if o.snapped and is_box(o.bbox):
        x, y, w, h = o.bbox
        for c, v in zip(CORNERS, (x, y, x + w, y + h)):
            el.set(c, fmt(v))
    if o.status is None:
        return
    extra = {"status": o.status, "reason": o.reason or "", "needs_review": str(o.needs_review).lower(),
             "review": ";".join(o.review), "change": _edges(o.change, 3), "confidence": _edges(o.confidence, 4)}
    if is_box(o.rough):
        x, y, w, h = o.rough
        extra["rough"] = ",".join(fmt(v) for v in (x, y, x + w, y + h))
    for k, v in extra.items():
        el.set(f"snapper_{k}", v)


def _write_back(coco: dict[str, Any], side: Sidecar, out_dir: Path) -> list[Path]:
    src = Path(side.source)
    root = _root(src)
    anns = by_id(coco)
    where = {(r["image"], r["box"]): i for i, r in side.records.items()}
    for k, im in enumerate(root.findall("image")):
        for j, el in enumerate(im.findall("box")):
            ann_id = where.get((k, j))
            if ann_id is None or ann_id not in anns:
                raise FormatError(f"{src}: image {im.get('name')!r}, box {j + 1} is not in the result (file changed?)")
            apply(el, outcome(anns[ann_id]))
    return [write_xml(root, out_dir / src.name)]


def _fresh(coco: dict[str, Any]) -> ET.Element:
    names = category_names(coco)
    per_image = group_by_image(coco)
    root = ET.Element("annotations")
    sub(root, "version", "1.1")
    labels = sub(sub(sub(root, "meta"), "task"), "labels")
    for n in names.values():
        sub(sub(labels, "label"), "name", n)
    for k, im in enumerate(coco.get("images", [])):
        attrs = {"id": str(k), "name": str(im["file_name"])}
        if im.get("width") and im.get("height"):
            attrs.update(width=str(im["width"]), height=str(im["height"]))
        image = ET.SubElement(root, "image", attrs)
        for a in per_image[im["id"]]:
            el = ET.SubElement(image, "box", {"label": names.get(a.get("category_id"), str(a.get("category_id"))),
                                              "source": "manual", "occluded": "0", "z_order": "0"})
            o = outcome(a)
            if is_box(o.bbox):
                x, y, w, h = o.bbox
                for c, v in zip(CORNERS, (x, y, x + w, y + h)):
                    el.set(c, fmt(v))
            apply(el, o)
    return root


def write(coco: dict[str, Any], sidecar: Sidecar | None, out_dir: str | Path) -> list[Path]:
    """The (snapped) COCO dict as a CVAT for images 1.1 file under ``out_dir``: the source file
    updated when ``sidecar`` is a CVAT one, else a new ``annotations.xml``."""
    out_dir = Path(out_dir)
    if sidecar is not None and sidecar.format == NAME:
        return _write_back(coco, sidecar, out_dir)
    return [write_xml(_fresh(coco), out_dir / DEFAULT_FILE)]
