"""``snapper noise-report`` on hand-made rough/gold pairs with a known bias: the numbers it
prints and writes are the ones put in."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from snapper.cli import main as cli
from snapper.evaluation.noise import pair_boxes

GOLD = [[10, 20, 100, 50], [200, 40, 40, 80], [50, 150, 60, 60], [300, 200, 120, 30]]


def _coco(boxes, ids, names=("a.jpg", "b.jpg")):
    images = [{"id": i + 1, "file_name": n, "width": 640, "height": 480} for i, n in enumerate(names)]
    anns = [{"id": aid, "image_id": 1 + (k % len(names)), "category_id": 1, "bbox": list(map(float, b)), "iscrowd": 0}
            for k, (aid, b) in enumerate(zip(ids, boxes))]
    return {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "x"}]}


def _loose(b, frac_x=0.08, up=0.04):
    """8% larger on each side horizontally, the whole box 4% of its height higher."""
    x, y, w, h = b
    return [x - frac_x * w, y - up * h, w * (1 + 2 * frac_x), h]


def test_a_known_bias_is_measured_per_edge(tmp_path, capsys):
    rough_boxes = [_loose(b) for b in GOLD]
    (tmp_path / "gold.json").write_text(json.dumps(_coco(GOLD, [1, 2, 3, 4])))
    (tmp_path / "rough.json").write_text(json.dumps(_coco(rough_boxes, [1, 2, 3, 4])))
    assert cli(["noise-report", str(tmp_path / "rough.json"), str(tmp_path / "gold.json"), str(tmp_path / "out")]) == 0
    report = json.loads((tmp_path / "out" / "noise.json").read_text())
    assert report["n_pairs"] == 4 and report["matched_by"] == "annotation_id"
    out = report["outward"]
    assert out["left"]["mean"] == pytest.approx(0.08) and out["right"]["mean"] == pytest.approx(0.08)
    assert out["top"]["mean"] == pytest.approx(0.04) and out["bottom"]["mean"] == pytest.approx(-0.04)
    assert report["shift"]["y"]["mean"] == pytest.approx(-0.04)
    assert report["scale"]["x"]["mean"] == pytest.approx(1.16)
    assert report["share_inside_paper_jitter"] == 0.0  # 16% wider is outside [0.9, 1.1]
    pairs = pd.read_parquet(tmp_path / "out" / "pairs.parquet")
    assert len(pairs) == 4 and np.allclose(pairs["px_left"], [-0.08 * b[2] for b in GOLD])
    assert (tmp_path / "out" / "noise.png").stat().st_size > 1000
    printed = capsys.readouterr().out
    assert "left" in printed and "+8.0" in printed and "0.0% inside the paper's jitter" in printed


def test_without_shared_ids_boxes_pair_by_iou_on_the_same_image(tmp_path):
    rough = [_loose(b, 0.02, 0.0) for b in GOLD][::-1]  # other order, other ids, one extra far away
    (tmp_path / "gold.json").write_text(json.dumps(_coco(GOLD, [1, 2, 3, 4])))
    rough_coco = _coco(rough, [91, 92, 93, 94], names=("b.jpg", "a.jpg"))  # image ids differ too
    rough_coco["annotations"].append({"id": 95, "image_id": 1, "category_id": 1, "bbox": [600, 400, 10, 10]})
    (tmp_path / "rough.json").write_text(json.dumps(rough_coco))
    pairs = pair_boxes(tmp_path / "rough.json", tmp_path / "gold.json")
    assert pairs.matched_by == "iou" and len(pairs.table) == 4
    assert (pairs.unmatched_rough, pairs.unmatched_gold) == (1, 0)
    assert np.allclose(pairs.table["outward_left"], 0.02) and np.allclose(pairs.table["outward_top"], 0.0)


def test_files_that_cannot_be_paired_are_one_line(tmp_path, capsys):
    (tmp_path / "gold.json").write_text(json.dumps(_coco(GOLD, [1, 2, 3, 4])))
    far = _coco([[600, 400, 10, 10]], [9])
    (tmp_path / "rough.json").write_text(json.dumps(far))
    assert cli(["noise-report", str(tmp_path / "rough.json"), str(tmp_path / "gold.json"), str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no box pairs" in err[0]
    (tmp_path / "bad.json").write_text("{")
    assert cli(["noise-report", str(tmp_path / "bad.json"), str(tmp_path / "gold.json"), str(tmp_path / "o")]) == 2
    assert "bad.json" in capsys.readouterr().err


def test_empirical_jitter_draws_the_measured_offsets_jointly(tmp_path):
    """jitter.mode=empirical: rough boxes drawn from a noise report's pairs reproduce their
    per-edge offsets and the coupling between edges (statistics over many draws)."""
    from snapper.config import JitterConfig
    from snapper.errors import ConfigError
    from snapper.geometry import jitter_boxes, jitter_by_annotation

    rng = np.random.default_rng(0)
    gold, rough = [], []
    for k in range(400):  # shifted right by 5% of the width, plus noise; left and right move together
        x, y, w, h = 100 + k % 50, 80, 60 + k % 30, 40
        s = 0.05 + 0.03 * rng.standard_normal()
        gold.append([x, y, w, h])
        rough.append([x + s * w, y - 0.02 * h, w, h * 1.02])
    (tmp_path / "gold.json").write_text(json.dumps(_coco(gold, list(range(1, 401)))))
    (tmp_path / "rough.json").write_text(json.dumps(_coco(rough, list(range(1, 401)))))
    assert cli(["noise-report", str(tmp_path / "rough.json"), str(tmp_path / "gold.json"), str(tmp_path / "n")]) == 0
    cfg = JitterConfig(mode="empirical", noise_file=str(tmp_path / "n" / "pairs.parquet"))
    true = np.tile([[200.0, 100.0, 300.0, 150.0]], (4000, 1))  # w 100, h 50, far from the borders
    drawn = jitter_boxes(true, 640, 480, np.random.default_rng(1), cfg)
    off = (drawn - true) / np.array([100.0, 50.0, 100.0, 50.0])
    assert off[:, 0].mean() == pytest.approx(0.05, abs=0.005) and off[:, 0].std() == pytest.approx(0.03, abs=0.005)
    assert np.allclose(off[:, 0], off[:, 2])  # the two edges of one box moved together, as measured
    assert off[:, 1].mean() == pytest.approx(-0.02, abs=1e-6) and off[:, 3].mean() == pytest.approx(0.0, abs=1e-6)
    again = jitter_by_annotation(true[:5], [1, 2, 3, 4, 5], 640, 480, cfg)  # evaluation: fixed per annotation id
    assert np.array_equal(again, jitter_by_annotation(true[:5], [1, 2, 3, 4, 5], 640, 480, cfg))
    with pytest.raises(ConfigError, match="jitter.noise_file"):
        JitterConfig(mode="empirical")
    with pytest.raises(ConfigError, match="not a noise-report pairs.parquet"):
        jitter_boxes(true[:1], 640, 480, rng, JitterConfig(mode="empirical", noise_file=str(tmp_path / "gold.json")))


def test_the_report_says_which_context_holds_the_measured_boxes():
    from snapper.geometry import context_for, crop_coverage

    tight = np.array([[0.3, 0.0, -0.3, 0.0]] * 10)  # rough 30% inside the true box on both sides
    assert crop_coverage(tight, 1.4) == 0.0  # the crop (20% of a 0.4-wide rough box) misses the truth
    assert crop_coverage(tight, context_for(tight)) >= 0.99 and context_for(tight) > 2.0
