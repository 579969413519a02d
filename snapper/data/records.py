"""The one record of an image that every data stage hands on, and the image formats it carries.

``load_coco`` makes an :class:`ImageRecord` per usable image (``path`` and ``format`` set),
sharding stores its :meth:`ImageRecord.sidecar` next to the original image bytes, and the
streams parse each shard sample back into one (``data`` and ``source`` set). One type for
both ends keeps what sharding writes and what the streams read from drifting apart.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

# What sharding writes: the extension of the real container format (sniffed from the bytes,
# never taken from the file name). Readers also accept the long spellings other writers use.
WRITTEN_EXTS = ("jpg", "png", "webp", "bmp", "tif")
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff")


def sniff_image_format(head: bytes) -> str | None:
    """Extension (one of ``WRITTEN_EXTS``) for the image container in ``head`` (first >= 12
    bytes), from magic numbers: a PNG saved as ``.jpg`` must travel as ``.png`` so that
    decoders pick the right codec."""
    if head[:3] == b"\xff\xd8\xff":
        return "jpg"
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[:2] == b"BM":
        return "bmp"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "tif"
    return None


@dataclass
class ImageRecord:
    """One image and its annotations (``bbox`` COCO xywh; ``id``, ``category_id``,
    ``iscrowd``, ``area``).

    From ``load_coco``: ``path`` (absolute) and ``format`` (None when images were not
    checked); boxes are validated and clipped. From a shard sample: ``data`` (the encoded
    image) and ``source`` (``<shard url>:<key>``); the box arrays below are what the streams
    work on, derived once (``parse_sample`` touches them so malformed boxes fail there).
    """

    image_id: int
    file_name: str
    width: int
    height: int
    annotations: list[dict[str, Any]] = field(default_factory=list)
    path: str | None = None
    format: str | None = None
    data: bytes | None = field(default=None, repr=False)
    source: str | None = None

    def sidecar(self) -> dict[str, Any]:
        """The JSON stored next to the image in a shard."""
        return {
            "image_id": self.image_id,
            "file_name": self.file_name,
            "width": self.width,
            "height": self.height,
            "annotations": self.annotations,
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-able (for plans passed between processes); the image bytes stay out."""
        return {"image_id": self.image_id, "file_name": self.file_name, "width": self.width, "height": self.height,
                "annotations": self.annotations, "path": self.path, "format": self.format, "source": self.source}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ImageRecord":
        return cls(**d)

    @property
    def name(self) -> str:
        """How log lines and errors name the image."""
        return f"{self.file_name} ({self.source})" if self.source else self.file_name

    # --- box arrays (shard samples may come from other writers: missing fields get defaults)
    @cached_property
    def boxes(self) -> np.ndarray:
        """(n, 4) COCO xywh, float64."""
        boxes = np.array([a["bbox"] for a in self.annotations], dtype=np.float64).reshape(-1, 4)
        if len(boxes) != len(self.annotations):
            raise ValueError("a bbox does not have 4 numbers")
        return boxes

    @cached_property
    def annotation_ids(self) -> np.ndarray:
        return np.array([int(a["id"]) for a in self.annotations], dtype=np.int64)

    @cached_property
    def category_ids(self) -> np.ndarray:
        return np.array([int(a.get("category_id", -1)) for a in self.annotations], dtype=np.int64)

    @cached_property
    def iscrowd(self) -> np.ndarray:
        return np.array([bool(a.get("iscrowd", 0)) for a in self.annotations], dtype=bool)

    @cached_property
    def areas(self) -> np.ndarray:
        """COCO ``area`` (the object's, not its box's), else the box area."""
        return np.array([float(a.get("area", a["bbox"][2] * a["bbox"][3])) for a in self.annotations],
                        dtype=np.float64)
