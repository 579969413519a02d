"""The one ImageRecord and the image formats: what sharding writes is what readers accept."""

from __future__ import annotations

import json

import numpy as np
import pytest

from snapper.data.records import IMAGE_EXTS, WRITTEN_EXTS, ImageRecord, sniff_image_format
from tests.cocofactory import image_bytes


def test_sniff_image_format() -> None:
    for fmt, ext in [("JPEG", "jpg"), ("PNG", "png"), ("WEBP", "webp"), ("BMP", "bmp"), ("TIFF", "tif")]:
        assert sniff_image_format(image_bytes(8, 8, 0, fmt)[:16]) == ext
    assert sniff_image_format(b"GIF89a" + b"\0" * 10) is None
    assert sniff_image_format(json.dumps({}).encode()) is None


def test_readers_accept_everything_sharding_writes() -> None:
    assert set(WRITTEN_EXTS) <= set(IMAGE_EXTS)
    assert {"jpeg", "tiff"} <= set(IMAGE_EXTS)  # spellings other shard writers use


def test_record_round_trips_without_its_bytes() -> None:
    anns = [{"id": 5, "bbox": [1.0, 2.0, 3.0, 4.0], "category_id": 2, "iscrowd": 1, "area": 9.0}]
    rec = ImageRecord(7, "a.jpg", 20, 10, anns, path="/d/a.jpg", format="jpg", data=b"bytes", source="s.tar:7")
    d = json.loads(json.dumps(rec.to_dict()))
    assert "data" not in d
    again = ImageRecord.from_dict(d)
    assert again.data is None and again.sidecar() == rec.sidecar() == {
        "image_id": 7, "file_name": "a.jpg", "width": 20, "height": 10, "annotations": anns}
    assert rec.name == "a.jpg (s.tar:7)" and ImageRecord(1, "b.png", 4, 4).name == "b.png"


def test_box_arrays() -> None:
    rec = ImageRecord(1, "a.jpg", 20, 10, [{"id": 5, "bbox": [1, 2, 3, 4], "category_id": 2, "iscrowd": 1, "area": 9},
                                           {"id": 6, "bbox": [0, 0, 2, 2]}])
    assert rec.boxes.dtype == np.float64 and rec.boxes.tolist() == [[1, 2, 3, 4], [0, 0, 2, 2]]
    assert rec.annotation_ids.tolist() == [5, 6] and rec.category_ids.tolist() == [2, -1]
    assert rec.iscrowd.tolist() == [True, False] and rec.areas.tolist() == [9.0, 4.0]
    assert ImageRecord(1, "e.jpg", 4, 4).boxes.shape == (0, 4)
    with pytest.raises(ValueError, match="4 numbers"):
        _ = ImageRecord(1, "x.jpg", 4, 4, [{"id": 1, "bbox": [1, 2, 3, 4, 5, 6, 7, 8]}]).boxes
    with pytest.raises(ValueError):
        _ = ImageRecord(1, "x.jpg", 4, 4, [{"id": 1, "bbox": [1, 2, 3]}]).boxes
