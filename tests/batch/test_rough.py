"""The input: whole-file errors name the file; the chunk plan is deterministic."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from snapper import batch as B
from snapper.batch.rough import finite_box, input_files, rough_numbers


def test_plan_is_deterministic_and_covers_annotated_images(rough):
    ann, images, data = rough
    c1, c2 = B.plan_chunks(ann, images, 3), B.plan_chunks(ann, images, 3)
    assert c1 == c2 and [c.to_dict() for c in c1] == [B.Chunk.from_dict(c.to_dict()).to_dict() for c in c2]
    assert [i for c in c1 for i in c.image_ids] == [1, 2, 3, 4, 5, 6, 7]  # file order; 8 has no boxes
    assert sum(c.n_annotations for c in c1) == len(data["annotations"]) - 2  # minus the 2 orphans
    with pytest.raises(ValueError, match="chunk_images"):
        B.plan_chunks(ann, images, 0)


@pytest.mark.parametrize(
    "text, match",
    [("{not json", "not valid JSON"), ("[1, 2]", "JSON object"), ('{"images": []}', "annotations"),
     ('{"images": [], "annotations": [{"id": 1}, {"id": 1}]}', "duplicate annotation id 1"),
     ('{"images": [], "annotations": [{"image_id": 1}]}', "integer 'id'")],
)
def test_malformed_json_names_the_file(tmp_path, text, match):
    bad = tmp_path / "bad_rough.json"
    bad.write_text(text)
    with pytest.raises(B.BatchInputError, match=rf"bad_rough\.json.*{match}"):
        B.plan_chunks(bad, tmp_path, 10)


NAN = float("nan")


@pytest.mark.parametrize(
    "bbox, reason",
    [(None, "missing_bbox"), ("14,11,41,30", "malformed_bbox"), ([1, 2, 3], "malformed_bbox"),
     ([True, 1, 2, 3], "malformed_bbox"), ([1, "2", 3, 4], "malformed_bbox"), ([NAN, 1, 2, 3], "non_finite"),
     ([None, 1, 2, 3], "non_finite"), ([1, 2, float("inf"), 3], "non_finite"), ([1, 2.5, 3, 4], None),
     ([10**400, 0, 10, 10], "out_of_range"), ([0, -(10**400), 10, 10], "out_of_range")],
)
def test_box_checks_without_pixels(bbox, reason):
    got, box = finite_box(bbox)
    assert got == reason
    if reason is None:
        assert box.tolist() == [float(v) for v in bbox]
    numbers = rough_numbers(bbox)  # what the table shows for the input box: NaN where it has no number
    assert len(numbers) == 4
    if reason in (None, "non_finite", "out_of_range"):
        want = [math.nan if v is None else ((math.inf if v > 0 else -math.inf) if abs(v) > 1e308 else float(v)) for v in bbox]
        np.testing.assert_array_equal(numbers, want)  # NaN only where there is no number; inf stays inf
    if reason == "missing_bbox" or isinstance(bbox, str):
        assert all(map(math.isnan, numbers))


def test_input_files_one_file_or_a_folder(tmp_path):
    (tmp_path / "b.json").write_text("{}")
    (tmp_path / "a.json").write_text("{}")
    (tmp_path / "notes.txt").write_text("x")
    assert input_files(tmp_path) == [tmp_path / "a.json", tmp_path / "b.json"]
    assert input_files(tmp_path / "a.json") == [tmp_path / "a.json"]
    with pytest.raises(B.BatchInputError, match="no such file"):
        input_files(tmp_path / "missing.json")
    (tmp_path / "empty").mkdir()
    with pytest.raises(B.BatchInputError, match="no \\*.json"):
        input_files(tmp_path / "empty")


def test_load_rough_parses_each_file_version_once(rough):
    ann, _, data = rough
    first = B.load_rough(ann)
    assert B.load_rough(ann) is first  # chunks of one run share the parsed file
    assert first.annotation_ids == [a["id"] for a in data["annotations"]]
    assert [first.annotations[i]["id"] for i in first.orphans] == [9001, 9002]
    ann.write_text(json.dumps({**data, "annotations": data["annotations"][:3]}))
    second = B.load_rough(ann)
    assert second is not first and second.sha256 != first.sha256 and len(second.annotations) == 3
