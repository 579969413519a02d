"""``EvalConfig.rough_file``: Table 1 on the annotators' own rough boxes (matched by annotation
id) instead of the jitter; a true box without one is counted, never silently scored."""

from __future__ import annotations

import json

import numpy as np
import pytest

from snapper.config import EvalConfig
from snapper.data.coco import CocoFormatError
from snapper.data.eval_stream import load_rough_boxes
from snapper.evaluation.evaluate import evaluate_identity
from tests.helpers import make_tiny_shards


def test_the_rough_boxes_of_the_file_are_scored_and_missing_ones_counted(tmp_path):
    shards = make_tiny_shards(tmp_path, n_images=4)
    anns = [a for a in json.loads(shards["ann"].read_text())["annotations"] if not a.get("iscrowd")]
    given = [{**a, "bbox": [a["bbox"][0] + 1.0, a["bbox"][1], a["bbox"][2], a["bbox"][3]]} for a in anns[1:]]
    rough = tmp_path / "rough.json"
    rough.write_text(json.dumps({"images": [], "annotations": given, "categories": []}))
    stats: dict = {}
    df = evaluate_identity(EvalConfig(shards=shards["train"] + shards["val"], rough_file=str(rough)), stats)
    assert anns[0]["id"] not in set(df["annotation_id"]) and stats["excluded_boxes"]["no_rough_box"] == 1
    by_id = {a["id"]: a["bbox"] for a in given}
    for _, row in df.iterrows():
        x, y, w, h = by_id[row["annotation_id"]]
        assert row["rough_x"] == pytest.approx(x, abs=1e-3) and row["rough_y"] == pytest.approx(y, abs=1e-3)
    assert np.allclose(df["dev_left"].to_numpy(), 1.0, atol=1e-3)  # each rough box 1 px right of its truth


def test_a_broken_rough_box_names_the_annotation(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"images": [], "annotations": [{"id": 7, "bbox": [0, 0, -1, 3]}], "categories": []}))
    with pytest.raises(CocoFormatError, match="annotation 7"):
        load_rough_boxes(bad)
