"""Shard samples -> ImageRecord: the record sharding wrote comes back, bad samples are named
and given a stable reason, unusable boxes are counted."""

from __future__ import annotations

import json

import numpy as np
import pytest
import webdataset as wds

from snapper.data.accounting import Tally
from snapper.data.coco import load_coco
from snapper.data.records import IMAGE_EXTS
from snapper.data.samples import SampleError, parse_sample, usable
from tests.data.shardfactory import rect_samples


def _sample(meta, ext="png", image=b"img", key="000000000007", url="s.tar") -> dict:
    s = {"__key__": key, "__url__": url, ext: image}
    if meta is not None:
        s["json"] = meta if isinstance(meta, bytes) else json.dumps(meta).encode()
    return s


def test_sharded_records_come_back_as_the_same_image_record(coco_shards, tmp_path):
    out, manifest = coco_shards
    index = load_coco(tmp_path / "coco" / "annotations.json", tmp_path / "coco" / "images")
    urls = [str(out / s["file"]) for s in manifest.shards]
    got = [parse_sample(s) for s in wds.WebDataset(urls, shardshuffle=False, empty_check=False)]
    assert [r.sidecar() for r in got] == [r.sidecar() for r in index.images]
    rec = got[0]
    assert rec.data == (tmp_path / "coco" / "images" / rec.file_name).read_bytes()
    assert rec.source == f"{urls[0]}:{rec.image_id:012d}" and rec.source in rec.name
    assert rec.boxes.shape == (2, 4) and rec.boxes.dtype == np.float64
    assert rec.annotation_ids.tolist() == [a["id"] for a in rec.annotations]


def test_defaults_for_fields_other_writers_leave_out():
    rec = parse_sample(_sample({"image_id": 7, "width": 10, "height": 8,
                                "annotations": [{"id": 3, "bbox": [1, 1, 4, 5]}]}))
    assert rec.file_name == "000000000007"
    assert rec.category_ids.tolist() == [-1] and rec.iscrowd.tolist() == [False] and rec.areas.tolist() == [20.0]


@pytest.mark.parametrize("ext", IMAGE_EXTS)
def test_every_image_extension_a_reader_accepts(ext):
    assert parse_sample(_sample({"image_id": 1, "width": 4, "height": 4}, ext=ext, image=b"x")).data == b"x"


@pytest.mark.parametrize("sample, reason, message", [
    (_sample(None), "missing_json", "no .json member"),
    (_sample(b"{not json"), "bad_json", "not valid JSON"),
    (_sample(b"[1, 2]"), "bad_json", "not an object"),
    (_sample({"image_id": 1, "width": 4, "height": 4}, ext="gif"), "missing_image", "no image member"),
    (_sample({"image_id": 1, "height": 4}), "bad_json", "malformed metadata"),
    (_sample({"image_id": 1, "width": 4, "height": 4, "annotations": {"id": 1}}), "bad_json", "not a list"),
    (_sample({"image_id": 1, "width": 4, "height": 4, "annotations": [{"id": 1, "bbox": [1, 2, 3]}]}),
     "bad_json", "malformed metadata"),
    (_sample({"image_id": 1, "width": 4, "height": 4, "annotations": [{"id": 1, "bbox": list(range(8))}]}),
     "bad_json", "4 numbers"),
    (_sample({"image_id": 1, "width": 4, "height": 4, "annotations": [{"bbox": [1, 2, 3, 4]}]}),
     "bad_json", "malformed metadata"),
    # numbers no int64/float64 holds (another writer's shard): counted, never a traceback
    (_sample({"image_id": 1, "width": 4, "height": 4, "annotations": [{"id": 2**64, "bbox": [1, 2, 3, 4]}]}),
     "bad_json", "OverflowError"),
    (_sample({"image_id": 1, "width": 4, "height": 4, "annotations": [{"id": 1, "bbox": [10**400, 2, 3, 4]}]}),
     "bad_json", "OverflowError"),
])
def test_bad_samples_name_shard_key_and_reason(sample, reason, message):
    with pytest.raises(SampleError, match=message) as e:
        parse_sample(sample)
    assert e.value.reason == reason and "s.tar:000000000007" in str(e.value)


def test_usable_counts_what_it_leaves_out():
    meta = rect_samples(1, boxes=2)[0]["meta"]
    meta["annotations"] += [
        {"id": 1, "bbox": [5, 5, 0, 4], "category_id": 1, "iscrowd": 0},  # degenerate
        {"id": 2, "bbox": [5, 5, 1.5, 9], "category_id": 1, "iscrowd": 0},  # small
        {"id": 3, "bbox": [5, 5, 20, 20], "category_id": 1, "iscrowd": 1},  # crowd
    ]
    tally = Tally()
    assert usable(parse_sample(_sample(meta)), tally, min_size=2.0).tolist() == [0, 1]
    assert tally.stats.skipped_boxes == {"box_degenerate": 1}
    assert tally.stats.excluded_boxes == {"small": 1, "crowd": 1}
