"""Pascal VOC XML: one ``<annotation>`` file per image (``filename``, ``size/width,height``,
``object/name``, ``object/bndbox/xmin,ymin,xmax,ymax``).

Pixel convention. VOC corners are 1-based, inclusive pixel indices: a box covering the
image's first column has ``xmin = 1``, one covering the last column of a W-pixel image has
``xmax = W``. In this project's continuous frame pixel i (0-based) covers [i, i+1), so

    COCO x = xmin - 1,  w = xmax - xmin + 1      (same for y, h)
    VOC  xmin = x + 1,  xmax = x + w

both ways, exactly (sub-pixel values included: a snapped edge is written with its fraction,
e.g. ``<xmin>15.25</xmin>``; integer boxes stay integers).

Reading: files in name order; a file that is not well-formed XML, has no ``<filename>`` or an
object without ``<name>`` is refused naming the file (and the object, 1-based). A missing or
non-numeric ``bndbox`` is passed on as it is, so the batch path keeps that one box with a
reason (``missing_bbox``/``malformed_bbox``); so are boxes outside the image.

Writing back (non-destructive): each source file is re-read and written under the output
folder with every element kept; a snapped object's ``bndbox`` becomes the snapped box and the
object gains a ``<snapper>`` element: status, reason, review flag and reasons, the rough box
(VOC convention), the per-edge change in pixels and the edge confidences. Without a VOC
source (converting from another format) one file per image is made from the COCO dict.
"""

from __future__ import annotations

import shutil
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
    replace_child,
    sub,
    write_xml,
)
from snapper.geometry import EDGE_NAMES

NAME = "voc"
CORNERS = ("xmin", "ymin", "xmax", "ymax")


def voc_to_xywh(xmin: float, ymin: float, xmax: float, ymax: float) -> list[float]:
    """1-based inclusive corners -> continuous COCO ``[x, y, w, h]``."""
    return [xmin - 1.0, ymin - 1.0, xmax - xmin + 1.0, ymax - ymin + 1.0]


def xywh_to_voc(box: list[float]) -> list[float]:
    """Continuous COCO ``[x, y, w, h]`` -> 1-based inclusive corners."""
    x, y, w, h = (float(v) for v in box)
    return [x + 1.0, y + 1.0, x + w, y + h]


def label_files(path: Path) -> list[Path]:
    """The XML files of a folder (name order), or the one file given."""
    if path.is_dir():
        files = sorted(p for p in path.glob("*.xml") if p.is_file())
        if not files:
            raise FormatError(f"{path}: folder has no *.xml files")
        return files
    if not path.is_file():
        raise FormatError(f"{path}: no such file or folder")
    return [path]


def _object_box(obj: ET.Element) -> Any:
    box = obj.find("bndbox")
    if box is None:
        return None
    texts = [box.findtext(c) for c in CORNERS]
    values = [number(t) for t in texts]
    if any(v is None for v in values):
        return raw_box(texts)
    return voc_to_xywh(*values)  # type: ignore[arg-type]


def _read_file(b: CocoBuilder, f: Path) -> None:
    """One file's image and objects, added to ``b`` only when the whole file reads (a file that
    fails half-way adds nothing): parsed and checked first, then added."""
    root = parse_xml(f)
    if root.tag != "annotation":
        raise FormatError(f"{f}: root element is <{root.tag}>, a Pascal VOC file has <annotation>")
    filename = (root.findtext("filename") or "").strip()
    if not filename:
        raise FormatError(f"{f}: no <filename>: the image of these boxes is unknown")
    objects = []
    for j, obj in enumerate(root.findall("object")):
        name = (obj.findtext("name") or "").strip()
        if not name:
            raise FormatError(f"{f}: object {j + 1} has no <name>")
        extra = {k: v.strip() for k in ("difficult", "truncated", "occluded", "pose")
                 if (v := obj.findtext(k)) is not None and v.strip()}
        objects.append((_object_box(obj), name, {"file": f.name, "object": j}, {"voc": extra} if extra else {}))
    image_id = b.image(filename, root.findtext("size/width"), root.findtext("size/height"))
    for box, name, record, extra_fields in objects:
        b.annotation(image_id, box, name, record, **extra_fields)


def read(path: str | Path, images_dir: str | Path | None = None, **_: Any) -> tuple[dict[str, Any], Sidecar]:
    """A VOC folder (or one XML file) -> (rough COCO dict, sidecar). ``images_dir`` is not
    needed: VOC files carry the image name and size."""
    path = Path(path)
    files = label_files(path)
    b = CocoBuilder()
    read, unreadable = [], []
    for f in files:
        try:
            _read_file(b, f)
            read.append(f.name)
        except FormatError as e:
            if not path.is_dir():
                raise
            unreadable.append({"file": f.name, "error": str(e)})  # reported; copied back unchanged
    if not read:
        raise FormatError(f"{path}: none of its {len(files)} XML files can be read ({unreadable[0]['error']}, ...)")
    side = Sidecar(NAME, str(path), b.records, {"folder": str(files[0].parent), "files": read,
                                                "unreadable": unreadable})
    return b.coco(f"Pascal VOC {path}"), side


# ------------------------------------------------------------------------------- writing


def _set_corners(parent: ET.Element, box: list[float]) -> None:
    for tag, v in zip(CORNERS, xywh_to_voc(box)):
        el = parent.find(tag)
        (el if el is not None else sub(parent, tag)).text = fmt(v)


def snapper_element(obj: ET.Element, o: Outcome) -> None:
    """The ``<snapper>`` child of an object: what was there before and how sure the snap is."""
    s = replace_child(obj, "snapper")
    sub(s, "status", o.status)
    if o.reason:
        sub(s, "reason", o.reason)
    if o.detail:
        sub(s, "detail", o.detail)
    sub(s, "needs_review", int(o.needs_review))
    sub(s, "review", ";".join(o.review))
    if is_box(o.rough):
        _set_corners(sub(s, "rough"), o.rough)
    if o.change:
        change = sub(s, "change_px")
        for e in EDGE_NAMES:
            sub(change, e, fmt(o.change[e], 3))
    if o.confidence:
        conf = sub(s, "confidence")
        for e in EDGE_NAMES:
            sub(conf, e, "" if o.confidence.get(e) is None else fmt(o.confidence[e], 4))


def apply(obj: ET.Element, o: Outcome) -> None:
    """Put one outcome into an ``<object>``: the snapped box as ``bndbox``, the rest beside."""
    if o.snapped and is_box(o.bbox):
        box = obj.find("bndbox")
        _set_corners(box if box is not None else sub(obj, "bndbox"), o.bbox)
    if o.status is not None:
        snapper_element(obj, o)


def _write_back(coco: dict[str, Any], side: Sidecar, out_dir: Path) -> list[Path]:
    anns = by_id(coco)
    where = {(r["file"], r["object"]): i for i, r in side.records.items()}
    folder = Path(side.extra["folder"])
    written = []
    for name in side.extra["files"]:
        root = parse_xml(folder / name)
        for j, obj in enumerate(root.findall("object")):
            ann_id = where.get((name, j))
            if ann_id is None or ann_id not in anns:
                raise FormatError(f"{folder / name}: object {j + 1} is not in the result (the file changed?)")
            apply(obj, outcome(anns[ann_id]))
        written.append(write_xml(root, out_dir / name))
    for u in side.extra.get("unreadable", []):  # kept as they were: nothing in them could be snapped
        out_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(folder / u["file"], out_dir / u["file"])
        written.append(out_dir / u["file"])
    return written


def _fresh_file(image: dict[str, Any], anns: list[dict[str, Any]], names: dict[Any, str]) -> ET.Element:
    root = ET.Element("annotation")
    sub(root, "filename", image["file_name"])
    if image.get("width") and image.get("height"):
        size = sub(root, "size")
        sub(size, "width", image["width"])
        sub(size, "height", image["height"])
        sub(size, "depth", 3)
    for a in anns:
        obj = sub(root, "object")
        sub(obj, "name", names.get(a.get("category_id"), str(a.get("category_id"))))
        o = outcome(a)
        if is_box(o.bbox):
            _set_corners(sub(obj, "bndbox"), o.bbox)
        if o.status is not None:
            snapper_element(obj, o)
    return root


def write(coco: dict[str, Any], sidecar: Sidecar | None, out_dir: str | Path) -> list[Path]:
    """The (snapped) COCO dict as VOC files under ``out_dir``; back into the source files
    when ``sidecar`` is a VOC one, else one new file per image (``<stem>.xml``)."""
    out_dir = Path(out_dir)
    if sidecar is not None and sidecar.format == NAME:
        return _write_back(coco, sidecar, out_dir)
    names = category_names(coco)
    per_image = group_by_image(coco)
    written, used = [], set()
    for im in coco.get("images", []):
        stem = Path(str(im["file_name"])).stem
        fname = f"{stem}.xml" if f"{stem}.xml" not in used else f"{stem}-{im['id']}.xml"
        used.add(fname)
        written.append(write_xml(_fresh_file(im, per_image.get(im["id"], []), names), out_dir / fname))
    return written
