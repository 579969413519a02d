"""Dataset audit: the scores by hand, the ranking and flag count, the seeded corruption, and
``snapper audit`` end to end on a tiny untrained model (every annotation accounted for, the
review list holding exactly the flagged suspects, bad input refused in one line)."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from snapper.batch.audit import AUDIT_JSON, AUDIT_PARQUET, AUDIT_SHEET
from snapper.batch.merge import REVIEW_COLUMNS
from snapper.cli.audit import main as audit_cli
from snapper.config import AuditConfig
from snapper.errors import ConfigError
from snapper.evaluation import audit as A
from tests.batchdata import EXPECTED, make_rough, tiny_checkpoint

NAN = float("nan")


def test_edge_numbers_and_suspicion_by_hand():
    ann = np.array([[10, 20, 110, 70], [0, 0, 10, 10], [0, 0, 50, 50]], float)  # 100x50, 10x10, 50x50
    prop = np.array([[13, 20, 110, 60], [0.5, 0, 10, 10], [NAN] * 4])  # left +3 px, bottom -10 px; left +0.5
    px, frac = A.edge_deltas(ann, prop)
    assert px[0].tolist() == [3, 0, 0, 10] and np.allclose(frac[0], [0.03, 0, 0, 0.2])
    assert np.isnan(px[2]).all()
    conf = np.array([[0.5, 1, 1, 0.9], [1, 1, 1, 1], [NAN] * 4])
    s = A.edge_suspicion(px, frac, conf, "conf_frac", min_px=1.0)
    assert np.allclose(s[0], [0.5 * 2 / 100, 0, 0, 0.9 * 9 / 50])  # (px - 1) / extent x confidence
    assert s[1].tolist() == [0, 0, 0, 0]  # 0.5 px: under min_px, not suspect
    assert np.allclose(A.edge_suspicion(px, frac, conf, "frac", 0.0)[0], [0.03, 0, 0, 0.2])
    assert np.allclose(A.edge_suspicion(px, frac, conf, "conf_px", 1.0)[0], [1.0, 0, 0, 8.1])
    assert np.allclose(A.edge_suspicion(px, frac, conf, "px", 0.0)[0], [3, 0, 0, 10])
    assert np.allclose(A.box_scores(s), [0.162, 0, NAN], equal_nan=True)
    assert np.allclose(A.box_scores(s, "top2"), [0.172, 0, NAN], equal_nan=True)
    assert A.suspect_edges(s, 0.5) == [["bottom"], [], []]
    assert A.suspect_edges(s, 0.05) == [["left", "bottom"], [], []]
    with pytest.raises(ValueError):
        A.edge_suspicion(px, frac, conf, "nope")


def test_rank_flag_count_and_the_measures():
    scores = np.array([0.2, NAN, 0.9, 0.2, 0.5])
    assert A.rank(scores).tolist() == [3, 5, 1, 4, 2]  # largest first, ties in input order, NaN last
    assert A.flag_count(0.05, 100) == 5 and A.flag_count(0.05, 101) == 6 and A.flag_count(3, 2) == 2
    assert A.flag_count(0.5, 0) == 0
    pos = np.array([True, True, True, False, False])
    # found at ranks 1 (precision 1) and 3 (2/3); the NaN one is never found
    assert A.average_precision(scores, pos) == pytest.approx((1 + 2 / 3) / 3)
    assert A.recall_at(scores, pos, 1) == pytest.approx(1 / 3)
    assert A.recall_at(scores, pos, 0.75) == pytest.approx(2 / 3)  # ceil(0.75 * 4 scored) = 3 flagged
    assert math.isnan(A.average_precision(scores, np.zeros(5, bool)))


def _coco(n: int = 40) -> dict:
    anns = [{"id": 100 + i, "image_id": 1 + i % 2, "category_id": 1, "iscrowd": 0,
             "bbox": [10.0 + i, 20.0, 100.0 + 5 * i, 60.0], "area": 1.0} for i in range(n)]
    anns[0]["iscrowd"] = 1
    anns[1]["bbox"] = [1, 2, NAN, 4]
    return {"images": [{"id": 1, "width": 640, "height": 480}, {"id": 2, "width": 400, "height": 300}],
            "annotations": anns, "categories": [{"id": 1, "name": "x"}]}


def test_corruption_is_seeded_and_moves_only_the_chosen_edges_by_the_stated_share():
    coco = _coco()
    before = json.dumps(coco)
    bad, records = A.corrupt_boxes(coco, 0.1, lo=0.03, hi=0.15, seed=3)
    assert json.dumps(coco) == before  # the input is not touched
    assert len(records) == round(0.1 * 38)  # crowd and non-finite boxes are not candidates
    again, same = A.corrupt_boxes(coco, 0.1, seed=3)
    assert same == records and again == bad
    assert A.corrupt_boxes(coco, 0.1, seed=4)[1] != records
    by_id = {a["id"]: a for a in bad["annotations"]}
    moved = {r["annotation_id"]: r for r in records}
    assert 100 not in moved and 101 not in moved
    sizes = {1: (640, 480), 2: (400, 300)}
    for a0 in coco["annotations"]:
        a = by_id[a0["id"]]
        if a0["id"] not in moved:
            assert json.dumps(a) == json.dumps(a0)
            continue
        r = moved[a0["id"]]
        assert 1 <= len(r["edges"]) <= 2 and r["original"] == a0["bbox"]
        x, y, w, h = a0["bbox"]
        old = dict(zip(("left", "top", "right", "bottom"), (x, y, x + w, y + h)))
        nx, ny, nw, nh = a["bbox"]
        new = dict(zip(("left", "top", "right", "bottom"), (nx, ny, nx + nw, ny + nh)))
        W, H = sizes[a["image_id"]]
        for e in old:
            if e in r["edges"]:
                extent = w if e in ("left", "right") else h
                assert abs(new[e] - old[e]) == pytest.approx(r["frac"][e] * extent)
                assert new[e] - old[e] == pytest.approx(r["edges"][e])
                assert 0.03 <= r["frac"][e] <= 0.15
                assert 0 <= new[e] <= (W if e in ("left", "right") else H)
            else:
                assert new[e] == pytest.approx(old[e], abs=1e-9)
        assert a["area"] == pytest.approx(nw * nh)
    with pytest.raises(ValueError):
        A.corrupt_boxes(coco, 1.5)


def test_config_refuses_bad_values():
    for bad in ({"flag": 0}, {"flag": 1.5}, {"score": "iou"}, {"box_score": "mean"}, {"min_px": -1},
                {"suspect_ratio": 0}):
        with pytest.raises(ConfigError):
            AuditConfig(**bad)


@pytest.fixture(scope="module")
def audited(tmp_path_factory):
    """One CLI audit of the batch tests' rough file (every kind of defect) with a tiny model."""
    root = tmp_path_factory.mktemp("audit")
    ann, images, data = make_rough(root / "in")
    ckpt = tiny_checkpoint(root / "ck")
    out = root / "out"
    rc = audit_cli([str(ann), str(images), str(out), "--model", str(ckpt), "--flag", "3", "--workers", "0",
                    "--device", "cpu", "--batch-size", "4", "--no-guard", "--chunk-images", "2"])
    return rc, out, data, ckpt, ann, images


def test_every_annotation_is_in_the_audit_and_the_suspects_in_review_csv(audited, capsys):
    rc, out, data, *_ = audited
    assert rc == 0
    frame = pd.read_parquet(out / AUDIT_PARQUET)
    assert frame["annotation_id"].tolist() == [a["id"] for a in data["annotations"]]  # all, in input order
    snapped = frame["status"] == "snapped"
    assert set(frame.loc[snapped, "annotation_id"]) == {i for i, (s, _) in EXPECTED.items() if s == "snapped"}
    assert frame.loc[~snapped, "score"].isna().all() and frame.loc[~snapped, "rank"].isna().all()
    assert frame.loc[snapped, "score"].notna().all()
    assert sorted(frame.loc[snapped, "rank"].astype(int)) == list(range(1, snapped.sum() + 1))
    assert frame["flagged"].sum() == 3
    review = pd.read_csv(out / "review.csv")
    assert list(review.columns) == REVIEW_COLUMNS
    top = frame[frame["flagged"]].sort_values("rank")
    assert review["annotation_id"].tolist() == top["annotation_id"].tolist()  # exactly the suspects, in rank order
    for reasons, edges in zip(review["review"], top["suspect_edges"]):
        assert reasons and reasons == ";".join(f"audit:{e}" for e in edges.split(","))
    s = json.loads((out / AUDIT_JSON).read_text())
    assert (s["n_annotations"], s["n_scored"], s["n_flagged"]) == (len(frame), int(snapped.sum()), 3)
    assert sum(s["unscored_reasons"].values()) == s["n_unscored"]
    assert (out / "snapped.json").is_file() and (out / "boxes.parquet").is_file()  # a batch-snap folder
    assert (out / AUDIT_SHEET).read_text().count("data:image/jpeg;base64") == 3


@pytest.mark.parametrize("case", ["malformed_json", "missing_images", "bad_flag"])
def test_bad_input_is_one_line_exit_2(audited, tmp_path, capsys, case):
    _, _, _, ckpt, ann, images = audited
    capsys.readouterr()
    args = [str(ann), str(images), str(tmp_path / "o"), "--model", str(ckpt), "--workers", "0", "--device", "cpu"]
    if case == "malformed_json":
        broken = tmp_path / "broken.json"
        broken.write_text("{")
        args[0] = str(broken)
    elif case == "missing_images":
        args[1] = str(images) + "-nope"
    if case == "bad_flag":
        with pytest.raises(SystemExit) as e:
            audit_cli([*args, "--flag", "1.5"])
        assert e.value.code == 2 and "--flag" in capsys.readouterr().err
        return
    assert audit_cli(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("snapper audit: ")
    assert ("broken.json" if case == "malformed_json" else "-nope") in err[0]
    assert not (tmp_path / "o" / AUDIT_PARQUET).exists()
