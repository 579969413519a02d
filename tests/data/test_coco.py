"""load_coco: fatal format errors name the file and entry; every other problem is a counted skip."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from snapper.data.coco import CocoFormatError, CocoIndex, load_coco
from tests.cocofactory import add_image, image_bytes, make_dataset, write_json


def test_valid_dataset_is_indexed_in_id_order(tmp_path: Path) -> None:
    ann, images, data = make_dataset(tmp_path, n_images=4, boxes_per_image=2)
    data["images"].reverse()  # input order must not matter
    data["annotations"].reverse()
    write_json(ann, data)
    ix = load_coco(ann, images)
    assert [r.image_id for r in ix.images] == [1, 8, 15, 22]
    assert [a["id"] for a in ix.images[1].annotations] == [800, 801]
    r = ix.images[0]
    assert (r.width, r.height, r.format, Path(r.path)) == (64, 48, "jpg", images / "img_000.jpg")
    a = r.annotations[1]
    assert a == {"id": 101, "bbox": [5.5, 3.25, 21.0, 15.5], "category_id": 1, "iscrowd": 0, "area": 21.0 * 15.5}
    assert ix.counts()["annotations_kept"] == 8 and ix.skipped == [] and ix.clipped == []
    assert len(ix.ann_sha256) == 64


def _mutate(tmp_path: Path, fn) -> Path:  # type: ignore[no-untyped-def]
    ann, _, data = make_dataset(tmp_path, n_images=2, boxes_per_image=2)
    fn(data)
    return write_json(ann, data)


FATAL = [
    ("missing images", lambda d: d.pop("images"), 'missing required key "images"'),
    ("missing annotations", lambda d: d.pop("annotations"), 'missing required key "annotations"'),
    ("annotations not list", lambda d: d.update(annotations={}), '"annotations" must be a list'),
    ("no bbox", lambda d: d["annotations"][1].pop("bbox"), 'annotation id 101 lacks "bbox"'),
    ("no image_id", lambda d: d["annotations"][1].pop("image_id"), 'annotation id 101 lacks "image_id"'),
    ("no ann id", lambda d: d["annotations"][1].pop("id"), 'annotations[1] lacks "id"'),
    ("bbox 3 numbers", lambda d: d["annotations"][2].update(bbox=[1, 2, 3]), "annotation id 800: bbox [1, 2, 3]"),
    ("bbox strings", lambda d: d["annotations"][2].update(bbox=["1", 2, 3, 4]), "annotation id 800: bbox"),
    ("bbox bool", lambda d: d["annotations"][2].update(bbox=[True, 2, 3, 4]), "annotation id 800: bbox"),
    ("duplicate ann id", lambda d: d["annotations"][3].update(id=800), "duplicate annotation id 800"),
    ("duplicate image id", lambda d: d["images"][1].update(id=1), "duplicate image id 1"),
    ("unknown image", lambda d: d["annotations"][0].update(image_id=999), "annotation id 100 refers to unknown image id 999"),
    ("image id str", lambda d: d["images"][0].update(id="1"), "id '1' is not a non-negative integer"),
    ("image no width", lambda d: d["images"][0].pop("width"), 'lacks "width"'),
    ("bad height", lambda d: d["images"][0].update(height=0), "image id 1: height 0"),
    ("traversal", lambda d: d["images"][0].update(file_name="../x.jpg"), "file_name '../x.jpg'"),
    ("absolute", lambda d: d["images"][0].update(file_name="/etc/passwd"), "file_name '/etc/passwd'"),
    ("dup file_name", lambda d: d["images"][1].update(file_name="img_000.jpg"), "already used by image id 1"),
    ("iscrowd 2", lambda d: d["annotations"][0].update(iscrowd=2), "annotation id 100: iscrowd 2"),
    ("area NaN", lambda d: d["annotations"][0].update(area=math.nan), "annotation id 100: area nan"),
    ("no category", lambda d: d["annotations"][0].pop("category_id"), 'annotation id 100 lacks "category_id"'),
    ("categories bad", lambda d: d.update(categories=[{"name": "x"}]), "categories[0]"),
    # ids travel as int64 through shards and streams: one that does not fit is named, not a traceback
    ("ann id 2**64", lambda d: d["annotations"][1].update(id=2**64), "annotations[1] id 18446744073709551616"),
    ("image id 2**63", lambda d: d["images"][0].update(id=2**63), "images[0] id 9223372036854775808"),
    ("category 2**63", lambda d: d["annotations"][0].update(category_id=2**63), "annotation id 100: category_id"),
    ("width 10**400", lambda d: d["images"][0].update(width=10**400), "image id 1: width 100000000000...(401 characters)"),
    ("area 10**400", lambda d: d["annotations"][0].update(area=10**400), "annotation id 100: area 100000000000...(401 characters)"),
]


@pytest.mark.parametrize("case,fn,message", FATAL, ids=[c[0] for c in FATAL])
def test_malformed_input_is_a_clear_fatal_error(tmp_path: Path, case: str, fn, message: str) -> None:  # type: ignore[no-untyped-def]
    ann = _mutate(tmp_path, fn)
    with pytest.raises(CocoFormatError) as e:
        load_coco(ann, tmp_path / "images")
    assert str(ann) in str(e.value) and message in str(e.value), str(e.value)
    assert isinstance(e.value, ValueError)


@pytest.mark.parametrize("text,message", [("{not json", "not valid JSON"), ("[1, 2]", "top level must be a JSON object"),
                                          ("\xff\xfe", "not valid JSON")])
def test_not_coco_json(tmp_path: Path, text: str, message: str) -> None:
    ann = tmp_path / "a.json"
    ann.write_bytes(text.encode("latin-1"))
    with pytest.raises(CocoFormatError, match=message) as e:
        load_coco(ann, tmp_path)
    assert str(ann) in str(e.value)


def test_missing_annotation_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(CocoFormatError, match="nope.json"):
        load_coco(tmp_path / "nope.json", tmp_path)


def _bad_dataset(tmp_path: Path) -> tuple[Path, Path, dict, dict[int, str]]:
    """A dataset holding one instance of every skip case; returns the expected reason per
    annotation id (None = kept)."""
    ann, images, data = make_dataset(tmp_path, n_images=2, boxes_per_image=1)
    expect: dict[int, str | None] = {100: None, 800: None}
    jpg = image_bytes(64, 48, seed=5)
    ids = add_image(tmp_path, data, 50, "boxes.jpg", jpg, boxes=[
        [math.nan, 1, 10, 10],      # non_finite
        [1, None, 10, 10],          # null (NaN from JavaScript) -> non_finite
        [1, 1, 0, 10],              # degenerate
        [1, 1, 10, -3],             # degenerate
        [70, 1, 10, 10],            # outside_image (x >= width)
        [-20, 1, 20, 10],           # outside_image (touches the left edge only)
        [-5, 40, 20, 20],           # partly outside -> clipped to [0, 40, 15, 8], kept
        [10, 10, 0.5, 10],          # too_small
        [60.5, 1, 10, 10],          # clipped to w=3.5, kept
        [63.5, 1, 10, 10],          # clipped to w=0.5 -> too_small
        [5, 5, 30, 30],             # crowd, kept
    ])
    data["annotations"][-1]["iscrowd"] = 1
    reasons = ["non_finite", "non_finite", "degenerate", "degenerate", "outside_image", "outside_image",
               None, "too_small", None, "too_small", None]
    expect.update(zip(ids, reasons))
    for image_id, name, payload, reason, kw in [
        (60, "corrupt.jpg", b"\xff\xd8\xff" + b"garbage" * 20, "image_corrupt", {}),
        (61, "mismatch.jpg", jpg, "image_size_mismatch", {"width": 48, "height": 64}),
        (62, "anim.gif", image_bytes(64, 48, 1, "GIF"), "image_unsupported_format", {}),
    ]:
        for a in add_image(tmp_path, data, image_id, name, payload, boxes=[[1, 1, 10, 10], [2, 2, 5, 5]], **kw):
            expect[a] = reason
    for a in add_image(tmp_path, data, 63, "missing.jpg", b"", boxes=[[1, 1, 10, 10]]):
        expect[a] = "image_missing"
    (images / "missing.jpg").unlink()
    # a PNG saved with a .jpg name is fine: it travels as .png
    for a in add_image(tmp_path, data, 64, "really_png.jpg", image_bytes(64, 48, 2, "PNG")):
        expect[a] = None
    add_image(tmp_path, data, 65, "no_boxes.jpg", image_bytes(64, 48, 3), boxes=[])
    write_json(ann, data)
    return ann, images, data, expect  # type: ignore[return-value]


def test_every_problem_is_skipped_with_its_reason_or_kept(tmp_path: Path) -> None:
    ann, images, data, expect = _bad_dataset(tmp_path)
    ix = load_coco(ann, images, min_box_size=1.0)
    got = {s["annotation_id"]: s["reason"] for s in ix.skipped if s["annotation_id"] is not None}
    kept = {a["id"]: a for r in ix.images for a in r.annotations}
    assert {i: got.get(i) for i in expect} == expect
    assert set(kept) == {i for i, r in expect.items() if r is None}
    # image-level skips are listed once per image as well
    assert {s["image_id"]: s["reason"] for s in ix.skipped if s["annotation_id"] is None} == {
        60: "image_corrupt", 61: "image_size_mismatch", 62: "image_unsupported_format", 63: "image_missing"}
    assert "JSON says 48x64, file is 64x48" in next(s["detail"] for s in ix.skipped if s["image_id"] == 61)
    # clipping
    assert kept[5006]["bbox"] == [0.0, 40.0, 15.0, 8.0] and kept[5008]["bbox"] == [60.5, 1.0, 3.5, 10.0]
    assert ix.clipped == [5006, 5008]
    assert kept[5010]["iscrowd"] == 1 and ix.num_crowd == 1
    # formats from bytes, not names; image without boxes is kept
    recs = {r.image_id: r for r in ix.images}
    assert recs[64].format == "png" and recs[65].annotations == []
    c = ix.counts()
    assert c["images_without_annotations"] == 1 and c["images_skipped"] == 4
    assert ix.skip_counts == {"degenerate": 2, "image_corrupt": 2, "image_missing": 1, "image_size_mismatch": 2,
                              "image_unsupported_format": 2, "non_finite": 2, "outside_image": 2, "too_small": 2}


def test_accounting_nothing_lost_nothing_duplicated(tmp_path: Path) -> None:
    ann, images, data, _ = _bad_dataset(tmp_path)
    ix = load_coco(ann, images)
    input_ids = [a["id"] for a in data["annotations"]]
    kept = [a["id"] for r in ix.images for a in r.annotations]
    skipped = [s["annotation_id"] for s in ix.skipped if s["annotation_id"] is not None]
    assert sorted(kept + skipped) == sorted(input_ids)
    assert len(set(kept + skipped)) == len(input_ids)
    c = ix.counts()
    assert c["annotations_input"] == len(input_ids) == c["annotations_kept"] + c["annotations_skipped"]
    assert c["boxes"] + c["crowd"] == c["annotations_kept"]
    assert c["images_input"] == len(data["images"]) == c["images"] + c["images_skipped"]


def test_min_box_size_threshold(tmp_path: Path) -> None:
    ann, images, data, _ = _bad_dataset(tmp_path)
    loose = load_coco(ann, images, min_box_size=0.0)
    strict = load_coco(ann, images, min_box_size=4.0)
    assert loose.skip_counts.get("too_small", 0) == 0
    assert strict.skip_counts["too_small"] == 3  # 0.5-wide, clipped-to-0.5 and clipped-to-3.5
    with pytest.raises(ValueError, match="min_box_size"):
        load_coco(ann, images, min_box_size=math.nan)


def test_decode_mode_catches_truncated_jpeg_header_mode_does_not(tmp_path: Path) -> None:
    ann, images, data = make_dataset(tmp_path, n_images=1, boxes_per_image=1)
    full = image_bytes(64, 48, seed=9)
    add_image(tmp_path, data, 70, "trunc.jpg", full[: len(full) // 2])
    write_json(ann, data)
    assert load_coco(ann, images, check_images="header").image_skip_counts == {}
    assert load_coco(ann, images, check_images="decode").image_skip_counts == {"image_corrupt": 1}
    none = load_coco(ann, images, check_images="none")
    assert none.image_skip_counts == {} and {r.format for r in none.images} == {None}


def test_subset_partitions_records_and_skips(tmp_path: Path) -> None:
    ann, images, data, _ = _bad_dataset(tmp_path)
    ix = load_coco(ann, images)
    ids = ix.input_image_ids
    a, b = ix.subset(ids[::2]), ix.subset(ids[1::2])
    for key in ("images_input", "annotations_input", "annotations_kept", "annotations_skipped", "clipped"):
        assert a.counts()[key] + b.counts()[key] == ix.counts()[key]
    with pytest.raises(ValueError, match="12345"):
        ix.subset([12345])


def test_index_round_trips_as_json(tmp_path: Path) -> None:
    ann, images, _, _ = _bad_dataset(tmp_path)
    ix = load_coco(ann, images)
    again = CocoIndex.from_dict(json.loads(json.dumps(ix.to_dict())))
    assert again == ix and again.counts() == ix.counts() and again.skip_counts == ix.skip_counts
