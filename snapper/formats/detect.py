"""Which format an input is, from a peek at its content (never the whole file): crowd boxes
arrive with whatever extension the tool gave them, so names alone are not trusted where the
content can say.

* a file: XML whose root is ``<annotations>`` is CVAT for images, ``<annotation>`` is one VOC
  file; JSON whose first line is an object with ``source-ref`` is a Ground Truth manifest,
  other JSON is COCO;
* a folder: ``*.xml`` files are VOC (CVAT is one file), label ``*.txt`` files are YOLO,
  ``*.json`` files are COCO (each snapped on its own, as before, whatever else is beside them);
  a folder with both XML and txt files is ambiguous and refused. A Ground Truth manifest and a CVAT file are given as files.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from snapper.formats.common import FormatError

FORMATS = ("coco", "voc", "yolo", "groundtruth", "cvat")
PEEK = 1 << 16
_ROOT_TAG = re.compile(rb"<\s*([A-Za-z_][\w.\-]*)")


def _xml_root(head: bytes) -> str | None:
    """The first element's name, past the declaration, comments and processing instructions."""
    text = re.sub(rb"<\?.*?\?>|<!--.*?-->", b"", head, flags=re.DOTALL)
    m = _ROOT_TAG.search(text)
    return m.group(1).decode() if m else None


def detect_file(path: Path) -> str:
    try:
        with open(path, "rb") as f:
            head = f.read(PEEK)
    except OSError as e:
        raise FormatError(f"{path}: cannot read ({e.strerror or e})") from None
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if text.startswith(b"<"):
        root = _xml_root(text)
        if root == "annotations":
            return "cvat"
        if root == "annotation":
            return "voc"
        raise FormatError(f"{path}: XML with root <{root}> is neither CVAT for images (<annotations>) "
                          "nor Pascal VOC (<annotation>)")
    if text.startswith(b"{") or text.startswith(b"["):
        first = text.split(b"\n", 1)[0]
        try:
            obj = json.loads(first)
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):  # the full read says why
            obj = None
        if isinstance(obj, dict) and "source-ref" in obj:
            return "groundtruth"
        if obj is None and b'"source-ref"' in first:  # a first line longer than the peek
            return "groundtruth"
        return "coco"
    raise FormatError(f"{path}: cannot tell the format (neither XML nor JSON); pass --format")


def detect_folder(path: Path) -> str:
    kinds = {}
    for pattern, fmt in (("*.xml", "voc"), ("*.txt", "yolo"), ("*.json", "coco")):
        files = sorted(p for p in path.glob(pattern) if p.is_file() and p.name != "classes.txt")
        if files:
            kinds[fmt] = files
    if not kinds:
        raise FormatError(f"{path}: folder has no *.xml, *.txt or *.json files to read (a manifest is given as a file)")
    if "coco" in kinds:  # the folder mode of old, which looked at *.json only (notes beside them are fine)
        return "coco"
    if len(kinds) > 1:
        raise FormatError(f"{path}: folder holds {' and '.join(sorted(kinds))} files; pass --format, "
                          "or keep one kind per folder")
    (fmt, files), = kinds.items()
    if fmt == "voc":
        first = next(((f, kind) for f in files if (kind := _kind_or_none(f)) is not None), None)
        if first is not None and first[1] == "cvat":
            raise FormatError(f"{path}: {first[0].name} is CVAT for images; give the XML file itself")
    return fmt


def _kind_or_none(path: Path) -> str | None:
    """A file's format, or None for one that cannot be read (a broken file of a folder is
    reported by the reader, file by file, not here)."""
    try:
        return detect_file(path)
    except FormatError:
        return None


def detect_format(path: str | Path) -> str:
    """One of :data:`FORMATS` for a file or folder; :class:`FormatError` when it cannot tell."""
    p = Path(path)
    if p.is_dir():
        return detect_folder(p)
    if not p.is_file():
        raise FormatError(f"{p}: no such file or folder")
    return detect_file(p)
