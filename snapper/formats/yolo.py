"""YOLO txt: one ``<stem>.txt`` per image, one ``class cx cy w h`` line per box, normalised by
the image's width and height (continuous frame: ``cx = (x + w / 2) / W``).

The files carry no image size, so each label file's image is found in ``images_dir`` by stem
(``<stem>.jpg``, ``.png``, ... as in :data:`snapper.data.records.IMAGE_EXTS`) and its size
read from the header only (:func:`snapper.imageio.image_size`, after EXIF orientation, as
Ultralytics does). A label file without an image, or an unreadable image header, is refused
naming both: without the size its boxes have no pixel coordinates. Class names come from
``classes.txt`` (one per line) or a ``data.yaml`` ``names`` list/mapping in the labels folder
or its parent, else the class index is the name. A line that is not ``class cx cy w h``
(segment polygons, a missing field, a class that is not a whole number) is refused naming the
file and line; a non-numeric or non-finite coordinate is passed on, so the batch path keeps
that box with a reason.

Writing back: the format has no room for extras, so the txt files get the snapped boxes
(same class, same line order, other lines untouched) and ``snapper.csv`` beside them holds,
per box, the file and line, status, reason, review flag, the rough and snapped boxes in
pixels, the per-edge change and the confidences. Numbers are written to 12 decimals, so a
round trip through YOLO moves no box by more than ~1e-8 px on images up to 10^4 px.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pandas as pd

from snapper.atomic import atomic_write_csv, atomic_write_text
from snapper.data.records import IMAGE_EXTS
from snapper.errors import ConfigError
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
)
from snapper.geometry import EDGE_NAMES
from snapper.imageio import ImageError, image_size
from snapper.overrides import read_yaml

NAME = "yolo"
CLASSES_TXT = "classes.txt"
DATA_YAML = "data.yaml"
CSV_NAME = "snapper.csv"
DIGITS = 12


def label_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise FormatError(f"{folder}: YOLO labels are a folder of <image stem>.txt files")
    files = sorted(p for p in folder.glob("*.txt") if p.is_file() and p.name != CLASSES_TXT)
    if not files:
        raise FormatError(f"{folder}: folder has no label *.txt files")
    return files


def class_names(folder: Path) -> tuple[list[str] | None, str | None]:
    """(names by class index, the file they came from), or (None, None)."""
    for d in (folder, folder.parent):
        if (d / CLASSES_TXT).is_file():
            return [n.strip() for n in (d / CLASSES_TXT).read_text().splitlines() if n.strip()], str(d / CLASSES_TXT)
        if (d / DATA_YAML).is_file():
            try:
                names = read_yaml(d / DATA_YAML).get("names")
            except ConfigError as e:
                raise FormatError(str(e)) from None
            if isinstance(names, dict):
                names = [str(names[k]) for k in sorted(names, key=int)]
            if isinstance(names, list):
                return [str(n) for n in names], str(d / DATA_YAML)
    return None, None


def find_image(txt: Path, images_dir: Path) -> Path:
    for ext in IMAGE_EXTS:
        for e in (ext, ext.upper()):
            p = images_dir / f"{txt.stem}.{e}"
            if p.is_file():
                return p
    raise FormatError(f"{txt}: no image {txt.stem}.<{'|'.join(IMAGE_EXTS)}> in {images_dir}; "
                      "YOLO boxes need the image's size")


def parse_line(txt: Path, n: int, line: str) -> tuple[int, list[float | None]]:
    """(class index, [cx, cy, w, h]) of one label line; a malformed line raises naming it."""
    parts = line.split()
    if len(parts) != 5:
        raise FormatError(f"{txt}: line {n}: expected 'class cx cy w h' (5 fields), got {len(parts)} fields")
    try:
        cls = int(parts[0])
    except ValueError:
        raise FormatError(f"{txt}: line {n}: class {parts[0]!r} is not a whole number") from None
    if cls < 0:
        raise FormatError(f"{txt}: line {n}: class {cls} is negative")
    return cls, [number(p) for p in parts[1:]]


def to_pixels(v: list[float], width: int, height: int) -> list[float]:
    cx, cy, w, h = v
    # rounded to 1e-9 px: drops the float noise of the normalisation, moves nothing that matters
    return [round(p, 9) for p in ((cx - w / 2) * width, (cy - h / 2) * height, w * width, h * height)]


def to_normalised(box: list[float], width: int, height: int) -> list[float]:
    x, y, w, h = (float(b) for b in box)
    return [(x + w / 2) / width, (y + h / 2) / height, w / width, h / height]


def _read_file(b: CocoBuilder, txt: Path, images_dir: Path, names: list[str] | None) -> None:
    image = find_image(txt, images_dir)
    try:
        width, height = image_size(image)
    except ImageError as e:
        raise FormatError(f"{txt}: its image {e}") from None
    image_id = b.image(image.name, width, height)
    for n, line in enumerate(txt.read_text().splitlines(), 1):
        if not line.strip():
            continue
        cls, v = parse_line(txt, n, line)
        box = to_pixels(v, width, height) if all(x is not None for x in v) else line.split()[1:]  # type: ignore[arg-type]
        name = names[cls] if names and cls < len(names) else str(cls)
        b.category(name, cls + 1)
        b.annotation(image_id, box, name, {"file": txt.name, "line": n, "class": cls, "size": [width, height]})


def read(path: str | Path, images_dir: str | Path, **_: Any) -> tuple[dict[str, Any], Sidecar]:
    """A folder of YOLO label files -> (rough COCO dict, sidecar)."""
    folder = Path(path)
    files = label_files(folder)
    names, names_file = class_names(folder)
    b = CocoBuilder()
    for txt in files:
        _read_file(b, txt, Path(images_dir), names)
    extra = {"folder": str(folder), "files": [f.name for f in files], "names": names, "names_file": names_file}
    return b.coco(f"YOLO {folder}"), Sidecar(NAME, str(folder), b.records, extra)


# ------------------------------------------------------------------------------- writing


def box_line(cls: int, box: list[float], width: int, height: int) -> str:
    return " ".join([str(cls), *(fmt(v, DIGITS) for v in to_normalised(box, width, height))])


def csv_row(file: str, line: int, cls: int, o: Outcome) -> dict[str, Any]:
    row: dict[str, Any] = {"file": file, "line": line, "class": cls, "status": o.status, "reason": o.reason,
                           "needs_review": o.needs_review, "review": ";".join(o.review)}
    for prefix, box in (("rough", o.rough), ("snapped", o.bbox if o.snapped else None)):
        row.update({f"{prefix}_{k}": (box[i] if is_box(box) else None) for i, k in enumerate("xywh")})
    row.update({f"change_{e}": (o.change or {}).get(e) for e in EDGE_NAMES})
    row.update({f"conf_{e}": (o.confidence or {}).get(e) for e in EDGE_NAMES})
    return row


def _write_back(coco: dict[str, Any], side: Sidecar, out_dir: Path) -> list[Path]:
    anns = by_id(coco)
    where = {(r["file"], r["line"]): (i, r) for i, r in side.records.items()}
    folder = Path(side.extra["folder"])
    written, rows = [], []
    for name in side.extra["files"]:
        lines = (folder / name).read_text().splitlines()
        for n in range(1, len(lines) + 1):
            if (name, n) not in where:
                continue
            ann_id, r = where[(name, n)]
            if ann_id not in anns:
                raise FormatError(f"{folder / name}: line {n} is not in the result (the file changed?)")
            o = outcome(anns[ann_id])
            if o.snapped and is_box(o.bbox):
                lines[n - 1] = box_line(r["class"], o.bbox, *r["size"])
            if o.status is not None:
                rows.append(csv_row(name, n, r["class"], o))
        written.append(atomic_write_text(out_dir / name, "\n".join(lines) + ("\n" if lines else "")))
    if side.extra.get("names_file"):
        written.append(Path(shutil.copyfile(side.extra["names_file"], out_dir / Path(side.extra["names_file"]).name)))
    if rows:
        written.append(atomic_write_csv(pd.DataFrame(rows), out_dir / CSV_NAME))
    return written


def _fresh(coco: dict[str, Any], out_dir: Path) -> list[Path]:
    names = category_names(coco)
    index = {cid: k for k, cid in enumerate(names)}
    written, rows, used = [], [], set()
    per_image = group_by_image(coco)
    for im in coco.get("images", []):
        w, h = im.get("width"), im.get("height")
        if not (w and h):
            raise FormatError(f"image {im['file_name']!r} has no width/height: YOLO boxes cannot be normalised")
        stem = Path(str(im["file_name"])).stem
        if stem in used:
            raise FormatError(f"two images named {stem}.*: YOLO label files are named by image stem")
        used.add(stem)
        lines = []
        for a in per_image[im["id"]]:
            o = outcome(a)
            if not is_box(o.bbox) or a.get("category_id") not in index:
                raise FormatError(f"annotation {a.get('id')}: bbox {o.bbox!r} / category {a.get('category_id')!r} "
                                  "cannot be written as a YOLO line")
            cls = index[a["category_id"]]
            lines.append(box_line(cls, o.bbox, w, h))
            if o.status is not None:
                rows.append(csv_row(f"{stem}.txt", len(lines), cls, o))
        written.append(atomic_write_text(out_dir / f"{stem}.txt", "".join(f"{x}\n" for x in lines)))
    written.append(atomic_write_text(out_dir / CLASSES_TXT, "".join(f"{n}\n" for n in names.values())))
    if rows:
        written.append(atomic_write_csv(pd.DataFrame(rows), out_dir / CSV_NAME))
    return written


def write(coco: dict[str, Any], sidecar: Sidecar | None, out_dir: str | Path) -> list[Path]:
    """The (snapped) COCO dict as YOLO label files (+ ``snapper.csv``) under ``out_dir``: the
    source files updated when ``sidecar`` is a YOLO one, else one ``<stem>.txt`` per image and
    ``classes.txt`` (class index = position in ``categories``)."""
    out_dir = Path(out_dir)
    if sidecar is not None and sidecar.format == NAME:
        return _write_back(coco, sidecar, out_dir)
    return _fresh(coco, out_dir)
