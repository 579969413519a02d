"""Format readers and writers without a model: the pixel conventions, a round trip through
every format, detection, non-destructive write-back and one clear error per bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from snapper.formats import FormatError, cvat, detect_format, groundtruth, read_any, voc, yolo
from snapper.formats.consolidate import agreement, group_boxes
from tests.formats.data import CVAT, IMAGES, base_coco, boxes_by_file, gt_manifest, make_images, voc_object, voc_xml


def _close(a: dict, b: dict, tol: float = 1e-6) -> None:
    assert a.keys() == b.keys()
    for f in a:
        assert [n for n, _ in a[f]] == [n for n, _ in b[f]], f
        for (_, x), (_, y) in zip(a[f], b[f]):
            assert max(abs(p - q) for p, q in zip(x, y)) <= tol, (f, x, y)


def test_voc_is_one_based_inclusive_both_ways():
    # a box over the whole 80 x 60 image: VOC (1, 1, 80, 60) = continuous [0, 0, 80, 60]
    assert voc.voc_to_xywh(1, 1, 80, 60) == [0.0, 0.0, 80.0, 60.0]
    assert voc.xywh_to_voc([0, 0, 80, 60]) == [1.0, 1.0, 80.0, 60.0]
    for box in ([14.5, 11.25, 41.0, 30.75], [0.1, 0.2, 0.3, 0.4], [3, 4, 1, 1]):
        assert voc.voc_to_xywh(*voc.xywh_to_voc(box)) == pytest.approx(box, abs=1e-12)


def test_round_trip_coco_voc_yolo_cvat_coco(tmp_path):
    images = make_images(tmp_path)
    coco = base_coco()
    voc.write(coco, None, tmp_path / "voc")
    c1, s1 = voc.read(tmp_path / "voc", images)
    assert s1.format == "voc" and len(c1["annotations"]) == len(coco["annotations"])
    yolo.write(c1, None, tmp_path / "yolo")
    assert (tmp_path / "yolo" / "c.txt").read_text() == ""  # an image without boxes keeps its (empty) file
    c2, _ = yolo.read(tmp_path / "yolo", images)
    cvat.write(c2, None, tmp_path / "cvat")
    c3, _ = cvat.read(tmp_path / "cvat" / cvat.DEFAULT_FILE, images)
    groundtruth.write(c3, None, tmp_path / "gt")
    c4, _ = groundtruth.read(tmp_path / "gt" / "output.manifest", images)
    want = boxes_by_file(coco)
    for got in (c1, c2, c3, c4):
        _close(boxes_by_file(got), want)
        assert {im["file_name"]: (im["width"], im["height"]) for im in got["images"]} == {
            n: (w, h) for n, (w, h, _) in IMAGES.items()}
        assert [a["id"] for a in got["annotations"]] == list(range(1, len(coco["annotations"]) + 1))


def test_detection_picks_each_format(tmp_path):
    images = make_images(tmp_path)
    coco = base_coco()
    (tmp_path / "rough.json").write_text(json.dumps(coco))
    voc.write(coco, None, tmp_path / "voc")
    yolo.write(coco, None, tmp_path / "yolo")
    cvat.write(coco, None, tmp_path / "cvat")
    gt_manifest(tmp_path / "job.manifest")
    (tmp_path / "job.json").write_text((tmp_path / "job.manifest").read_text())  # extension does not decide
    (tmp_path / "coco_dir").mkdir()
    (tmp_path / "coco_dir" / "one.json").write_text(json.dumps(coco))
    expected = {"rough.json": "coco", "coco_dir": "coco", "voc": "voc", "voc/a.xml": "voc", "yolo": "yolo",
                "cvat/annotations.xml": "cvat", "job.manifest": "groundtruth", "job.json": "groundtruth"}
    assert {p: detect_format(tmp_path / p) for p in expected} == expected
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "a.xml").write_text((tmp_path / "voc" / "a.xml").read_text())
    (mixed / "a.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    with pytest.raises(FormatError, match="voc and yolo"):
        detect_format(mixed)
    assert images.is_dir()


def test_write_back_keeps_everything_else(tmp_path):
    images = make_images(tmp_path)
    src = tmp_path / "voc"
    src.mkdir()
    (src / "a.xml").write_text(voc_xml("a.jpg", (80, 60), voc_object("car", (16, 13, 55, 42), "<pose>Left</pose>")))
    coco, side = voc.read(src, images)
    assert coco["annotations"][0]["bbox"] == [15.0, 12.0, 40.0, 30.0]
    assert coco["annotations"][0]["voc"] == {"difficult": "0", "pose": "Left"}
    snapped = dict(coco, annotations=[dict(coco["annotations"][0], bbox=[14.25, 12.0, 41.5, 29.0], snapper={
        "status": "snapped", "rough_bbox": [15.0, 12.0, 40.0, 30.0], "confidence": {"left": 0.9, "top": 0.8,
                                                                                   "right": 0.7, "bottom": 0.2},
        "needs_review": True, "review": ["low_confidence:bottom"]})])
    (out,) = voc.write(snapped, side, tmp_path / "out")
    text = out.read_text()
    assert "a comment kept on write" in text and "<pose>Left</pose>" in text and "<difficult>0</difficult>" in text
    again, _ = voc.read(out.parent, images)
    assert again["annotations"][0]["bbox"] == [14.25, 12.0, 41.5, 29.0]  # the snapped box is the main box
    assert "<left>-0.75</left>" in text and "<bottom>-1</bottom>" in text and "<needs_review>1</needs_review>" in text
    assert "<rough><xmin>16</xmin><ymin>13</ymin><xmax>55</xmax><ymax>42</ymax></rough>" in text.replace(
        "\n", "").replace(" ", "")
    (tmp_path / "cvat.xml").write_text(CVAT)
    coco, side = cvat.read(tmp_path / "cvat.xml", images)
    assert coco["annotations"][0]["attributes"] == {"color": "red", "occluded": True}
    (out,) = cvat.write(coco, side, tmp_path / "cvat_out")
    assert "<polygon" in out.read_text() and 'name="color">red<' in out.read_text()


def test_consolidation_groups_workers_by_iou():
    boxes = [[10, 10, 20, 20], [11, 10, 20, 21], [50, 50, 10, 10], [10, 11, 19, 20], [10, 10, 20, 20]]
    classes = ["car", "car", "car", "car", "person"]
    workers = ["w1", "w2", "w1", "w1", "w3"]
    # w1's second box near the first object starts a new object (one box per worker and object)
    assert group_boxes(boxes, classes, workers) == [0, 0, 1, 2, 3]
    assert agreement([[10, 10, 20, 20], [10, 10, 20, 20]]) == 1.0
    assert 0 < agreement(boxes[:2]) < 1 and agreement(boxes[:1]) is None


# ------------------------------------------------------------------------------- bad input

def _voc_bad(d: Path) -> Path:
    """A folder with nothing readable (one bad file beside good ones is reported per file and the
    rest snapped: tests/batch/test_reliability.py)."""
    d.mkdir()
    (d / "b.xml").write_text("<annotation><filename>b.png</filename><object><name>car</object></annotation>")
    return d


def _voc_entity(d: Path) -> Path:
    d.mkdir()
    (d / "e.xml").write_text('<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
                             "<annotation><filename>&x;</filename></annotation>")
    return d


def _voc_noname(d: Path) -> Path:
    d.mkdir()
    (d / "n.xml").write_text(voc_xml("a.jpg", None, voc_object("car", (1, 1, 5, 5)) + "<object><bndbox/></object>"))
    return d


def _gt_bad(d: Path) -> Path:
    gt_manifest(d.with_suffix(".manifest"))
    lines = d.with_suffix(".manifest").read_text().splitlines()
    lines[1] = lines[1][:-3]
    d.with_suffix(".manifest").write_text("\n".join(lines) + "\n")
    return d.with_suffix(".manifest")


def _yolo_fields(d: Path) -> Path:
    d.mkdir()
    (d / "a.txt").write_text("0 0.5 0.5 0.2 0.2\n1 0.5 0.5 0.2\n")
    return d


def _yolo_noimage(d: Path) -> Path:
    d.mkdir()
    (d / "zzz.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    return d


def _cvat_bad(d: Path) -> Path:
    (d.with_suffix(".xml")).write_text(CVAT.replace('<box label="car" occluded="0" xtl="90"', '<box occluded="0" xtl="90"'))
    return d.with_suffix(".xml")


def _cvat_broken(d: Path) -> Path:
    (d.with_suffix(".xml")).write_text(CVAT[:-30])
    return d.with_suffix(".xml")


@pytest.mark.parametrize("make, names", [
    (_voc_bad, ["b.xml", "not well-formed", "line 1"]),
    (_voc_entity, ["e.xml", "DOCTYPE"]),
    (_voc_noname, ["n.xml", "object 2 has no <name>"]),
    (_gt_bad, ["bad.manifest", "line 2", "not valid JSON"]),
    (_yolo_fields, ["a.txt", "line 2", "5 fields"]),
    (_yolo_noimage, ["zzz.txt", "no image zzz"]),
    (_cvat_bad, ["bad.xml", "'a.jpg', box 2 has no label"]),
    (_cvat_broken, ["bad.xml", "not well-formed"]),
])
def test_malformed_input_is_one_clear_error_naming_the_file(tmp_path, make, names):
    images = make_images(tmp_path)
    path = make(tmp_path / "bad")
    with pytest.raises(FormatError) as e:
        read_any(path, images)
    msg = str(e.value)
    assert "\n" not in msg and all(n in msg for n in names), msg


def test_boxes_that_cannot_be_snapped_reach_the_batch_path_as_they_are(tmp_path):
    images = make_images(tmp_path)
    d = tmp_path / "voc"
    d.mkdir()
    (d / "a.xml").write_text(voc_xml("a.jpg", (80, 60), voc_object("car", (500, 1, 520, 5))
                                     + voc_object("car", ("x", 1, 5, 5)) + "<object><name>car</name></object>"))
    (d / "gone.xml").write_text(voc_xml("gone.jpg", (80, 60), voc_object("car", (1, 1, 5, 5))))
    coco, _ = voc.read(d, images)
    assert [a["bbox"] for a in coco["annotations"]] == [[499.0, 0.0, 21.0, 5.0], ["x", "1", "5", "5"], None,
                                                       [0.0, 0.0, 5.0, 5.0]]
    assert [im["file_name"] for im in coco["images"]] == ["a.jpg", "gone.jpg"]  # missing: image_missing later


def test_label_attribute_is_detected_or_named(tmp_path):
    path = tmp_path / "job.manifest"
    gt_manifest(path, attr="cars-2024")
    coco, side = groundtruth.read(path)
    assert side.extra["label_attribute"] == "cars-2024"
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    lines[0]["other-job"] = lines[0]["cars-2024"]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    with pytest.raises(FormatError, match="line 1: cannot tell the label attribute"):
        groundtruth.read(path)
    _, side = groundtruth.read(path, label_attribute="cars-2024")
    with pytest.raises(FormatError, match="line 1: 'nope' is missing"):
        groundtruth.read(path, label_attribute="nope")
    assert len(coco["annotations"]) == 20
