"""Batch snapping: accounting on defective input, output format, fusion, resume, CLI."""

from __future__ import annotations

import contextlib
import io
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from snapper import batch as B
from snapper.cli import main as cli
from snapper.config import BatchConfig
from snapper.geometry import xywh_to_xyxy
from snapper.crop import tidy_boxes
from snapper.snap import Snapper

from tests.batchdata import EXPECTED, make_rough, tiny_checkpoint

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("ck") / "tiny")


def cfg(**kw) -> BatchConfig:
    return BatchConfig(**{"chunk_images": 2, "workers": 0, "batch_size": 4, "device": "cpu", **kw})


@pytest.fixture
def rough(tmp_path):
    return make_rough(tmp_path / "in")


def _same(a, b) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)  # NaN-safe equality


def test_every_annotation_once_with_status(rough, ckpt, tmp_path):
    ann, images, data = rough
    r = B.batch_snap(ann, images, tmp_path / "out", ckpt, cfg())
    out = json.loads(r.annotations.read_text())
    ids = [a["id"] for a in out["annotations"]]
    assert ids == [a["id"] for a in data["annotations"]]  # same order, nothing lost or duplicated
    got = {a["id"]: (a["snapper"]["status"], a["snapper"]["reason"]) for a in out["annotations"]}
    assert got == EXPECTED
    for k in ("info", "licenses", "images", "categories"):
        assert out[k] == data[k]

    by_id = {a["id"]: a for a in data["annotations"]}
    sizes = {im["id"]: (80, 60) for im in data["images"]}
    for a in out["annotations"]:
        s = a.pop("snapper")
        src = by_id[a["id"]]
        assert set(a) >= set(src)  # every input field is still there
        if s["status"] == "kept":
            assert _same(a, src)  # untouched, NaN and all
            assert s["confidence"] is None
            assert s["needs_review"] == (s["reason"] != "crowd")
        else:
            assert {k: v for k, v in a.items() if k not in ("bbox", "area")} == {k: v for k, v in src.items()
                                                                                  if k not in ("bbox", "area")}
            x, y, w, h = a["bbox"]
            W, H = sizes[a["image_id"]]
            assert all(map(math.isfinite, a["bbox"])) and w >= 1 and h >= 1
            assert x >= 0 and y >= 0 and x + w <= W + 1e-6 and y + h <= H + 1e-6
            assert s["rough_bbox"] == src["bbox"]
            assert set(s["confidence"]) == {"left", "top", "right", "bottom"}
            assert s["moved_px"] >= 0 and 0 <= s["iou_with_rough"] <= 1
            low = min(s["confidence"].values()) < BatchConfig().review_threshold
            assert s["needs_review"] == (low or s["moved_frac"] > BatchConfig().review_moved_frac)
            # COCO's area is the mask area: kept with a segmentation, else the new box's
            assert a["area"] == (123.0 if a["id"] == 1012 else pytest.approx(w * h, abs=1e-2))
    assert out["annotations"][12]["worker_id"] == "w7" and out["annotations"][12]["category_id"] == 2

    table = pd.read_parquet(r.boxes)
    assert len(table) == len(data["annotations"]) and table["annotation_id"].is_unique
    s = r.summary
    assert s["n_annotations"] == len(EXPECTED)
    assert s["status"] == {"snapped": sum(v[0] == "snapped" for v in EXPECTED.values()),
                           "kept": sum(v[0] == "kept" for v in EXPECTED.values())}
    assert sum(s["reasons"].values()) == s["status"]["kept"]
    assert s["reasons"]["non_finite"] == 4
    assert s["needs_review"] == int(table["needs_review"].sum())
    review = pd.read_csv(r.review)
    assert sorted(review["annotation_id"]) == sorted(table.loc[table["needs_review"], "annotation_id"])
    assert s["confidence"]["left"]["n"] == s["status"]["snapped"]


def test_output_loads_with_pycocotools(rough, ckpt, tmp_path):
    from pycocotools.coco import COCO

    ann, images, data = rough
    # pycocotools needs every annotation to have an image_id: drop the one input defect it
    # cannot read itself (the output keeps the input's fields, so it would inherit it).
    data["annotations"] = [a for a in data["annotations"] if "image_id" in a]
    ann.write_text(json.dumps(data))
    r = B.batch_snap(ann, images, tmp_path / "out", ckpt, cfg())
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(r.annotations))
    assert len(coco.getAnnIds()) == len(data["annotations"])
    assert len(coco.getAnnIds(imgIds=[1])) == 13
    assert coco.loadAnns([1001])[0]["snapper"]["status"] == "snapped"


def test_fused_boxes_per_object(rough, ckpt, tmp_path):
    ann, images, _ = rough
    r = B.batch_snap(ann, images, tmp_path / "out", ckpt, cfg())
    out = json.loads(r.annotations.read_text())
    fused = {f["object_id"]: f for f in out["snapper_fused"]}
    assert set(fused) == {"obj-1", "obj-2", "obj-3"} and r.summary["fused_objects"] == 3
    o1 = fused["obj-1"]
    assert o1["annotation_ids"] == [2001, 2002, 2003] and o1["n_snapped"] == 3 and o1["category_id"] == 1
    rows = pd.read_parquet(r.boxes).set_index("annotation_id").loc[o1["annotation_ids"]]
    edges = xywh_to_xyxy(rows[B.PRED_COLS].to_numpy())
    conf = rows[B.CONF_COLS].to_numpy()
    want = tidy_boxes(((conf * edges).sum(0) / conf.sum(0))[None], 80, 60)[0]
    x, y, w, h = o1["bbox"]
    np.testing.assert_allclose([x, y, x + w, y + h], want, atol=1e-3)
    assert w >= 1 and h >= 1
    assert fused["obj-2"]["n_snapped"] == 1
    assert fused["obj-2"]["bbox"] == next(a["bbox"] for a in out["annotations"] if a["id"] == 2004)
    assert fused["obj-3"]["bbox"] is None and fused["obj-3"]["needs_review"]
    # fusion off: no extra list
    r2 = B.batch_snap(ann, images, tmp_path / "out2", ckpt, cfg(fuse_key=None))
    assert "snapper_fused" not in json.loads(r2.annotations.read_text())


def test_matches_the_single_image_api_and_batching_does_not_matter(rough, ckpt, tmp_path):
    ann, images, data = rough
    a = pd.read_parquet(B.batch_snap(ann, images, tmp_path / "a", ckpt, cfg(batch_size=3)).boxes)
    b = pd.read_parquet(B.batch_snap(ann, images, tmp_path / "b", ckpt,
                                     cfg(batch_size=64, chunk_images=100, workers=2)).boxes)
    cols = B.PRED_COLS + B.CONF_COLS
    pd.testing.assert_frame_equal(a[["annotation_id", "status", "reason"]], b[["annotation_id", "status", "reason"]])
    np.testing.assert_allclose(a[cols].to_numpy(), b[cols].to_numpy(), atol=1e-3, equal_nan=True)
    s = Snapper.from_checkpoint(ckpt, device="cpu")
    ids = [1001, 1012, 1013]
    res = s.snap(images / "a.jpg", [next(x["bbox"] for x in data["annotations"] if x["id"] == i) for i in ids])
    rows = a.set_index("annotation_id").loc[ids]
    np.testing.assert_allclose(rows[B.PRED_COLS].to_numpy(), res.boxes, atol=1e-3)
    np.testing.assert_allclose(rows[B.CONF_COLS].to_numpy(), res.confidence, atol=1e-4)


def test_plan_is_deterministic_and_covers_annotated_images(rough):
    ann, images, data = rough
    c1, c2 = B.plan_chunks(ann, images, 3), B.plan_chunks(ann, images, 3)
    assert c1 == c2 and [c.to_dict() for c in c1] == [B.Chunk.from_dict(c.to_dict()).to_dict() for c in c2]
    assert [i for c in c1 for i in c.image_ids] == [1, 2, 3, 4, 5, 6, 7]  # file order; 8 has no boxes
    assert sum(c.n_annotations for c in c1) == len(data["annotations"]) - 2  # minus the 2 orphans
    with pytest.raises(ValueError, match="chunk_images"):
        B.plan_chunks(ann, images, 0)


def test_resume_reuses_finished_chunks_and_equals_a_clean_run(rough, ckpt, tmp_path):
    ann, images, _ = rough
    c = cfg()
    clean = B.batch_snap(ann, images, tmp_path / "clean", ckpt, c)
    out = tmp_path / "resumed"
    chunks = B.plan_chunks(ann, images, c.chunk_images)
    assert len(chunks) == 4
    done = [B.snap_chunk(ch, ckpt, out, c) for ch in chunks[:2]]  # "killed" after two chunks
    (done[0].parent / ".chunk-00002-deadbeef.parquet.tmp").write_bytes(b"half a file")  # a torn write
    old = {p: p.stat().st_mtime_ns for p in done}
    r = B.batch_snap(ann, images, out, ckpt, c)
    assert {p: p.stat().st_mtime_ns for p in done} == old  # not recomputed
    assert len(list((out / "chunks").glob("chunk-*.parquet"))) == 4
    assert r.annotations.read_text() == clean.annotations.read_text()
    # same chunk, other weights -> another result file (never a stale reuse)
    other = tiny_checkpoint(tmp_path / "other", seed=1)
    assert B.snap_chunk(chunks[0], other, out, c) != done[0]


KILLER = """
import os, signal, sys
from snapper import batch as B
from snapper.config import BatchConfig
ann, images, out, ckpt = sys.argv[1:5]
real, n = B.snap_chunk, [0]
def snap_then_die(*a, **k):
    if n[0] == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    n[0] += 1
    return real(*a, **k)
B.snap_chunk = snap_then_die
B.batch_snap(ann, images, out, ckpt, BatchConfig(chunk_images=2, workers=0, batch_size=4, device="cpu"))
"""


def test_resume_after_sigkill(rough, ckpt, tmp_path):
    ann, images, _ = rough
    out = tmp_path / "killed"
    p = subprocess.run([sys.executable, "-c", KILLER, str(ann), str(images), str(out), str(ckpt)],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert p.returncode == -9, p.stderr
    finished = sorted((out / "chunks").glob("chunk-*.parquet"))
    assert len(finished) == 2 and not (out / B.OUTPUT_JSON).exists()
    old = {f: f.stat().st_mtime_ns for f in finished}
    r = B.batch_snap(ann, images, out, ckpt, cfg())
    assert {f: f.stat().st_mtime_ns for f in finished} == old
    clean = B.batch_snap(ann, images, tmp_path / "clean", ckpt, cfg())
    assert r.annotations.read_text() == clean.annotations.read_text()


def test_merge_refuses_incomplete_or_duplicated_results(rough, ckpt, tmp_path):
    ann, images, _ = rough
    c = cfg()
    chunks = B.plan_chunks(ann, images, c.chunk_images)
    paths = [B.snap_chunk(ch, ckpt, tmp_path / "o", c) for ch in chunks]
    with pytest.raises(B.AccountingError, match=r"missing"):
        B.merge_chunks(ann, paths[:-1], tmp_path / "o", c)
    with pytest.raises(B.AccountingError, match=r"1 duplicated|duplicated"):
        B.merge_chunks(ann, paths + paths[:1], tmp_path / "o", c)
    assert not (tmp_path / "o" / B.OUTPUT_JSON).exists()
    assert B.merge_chunks(ann, paths, tmp_path / "o", c).is_file()


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


def test_truth_gives_table1_for_input_and_output(rough, ckpt, tmp_path):
    ann, images, data = rough
    truth = json.loads(json.dumps(data))
    for a in truth["annotations"]:
        if a["id"] in (1001, 1012, 1013, 2001, 2002, 2003):
            a["bbox"] = [15, 12, 40, 28]
    (tmp_path / "gt.json").write_text(json.dumps(truth))
    r = B.batch_snap(ann, images, tmp_path / "out", ckpt, cfg(), truth=tmp_path / "gt.json")
    t = r.summary["truth"]
    n_snapped = r.summary["status"]["snapped"]
    assert t["n_evaluated"] + t["n_snapped_without_truth"] == n_snapped and t["n_evaluated"] >= 6
    rows = {x["method"]: x for x in t["table1"] if x["size"] == "all"}
    assert set(rows) == {"input", "snapper"} and rows["input"]["n_boxes"] == t["n_evaluated"]
    assert 0 <= rows["input"]["miou"] <= 100
    assert (tmp_path / "out" / "table1.csv").is_file()


def test_cli_single_file_folder_and_errors(rough, ckpt, tmp_path, capsys):
    ann, images, data = rough
    args = ["--checkpoint", str(ckpt), "--chunk-images", "3", "--workers", "0", "--device", "cpu",
            "--review-threshold", "0.01"]
    assert cli(["batch-snap", str(ann), str(images), str(tmp_path / "o1"), *args]) == 0
    s = json.loads((tmp_path / "o1" / B.SUMMARY_JSON).read_text())
    assert s["config"]["review_threshold"] == 0.01 and s["config"]["chunk_images"] == 3
    assert "annotations" in capsys.readouterr().out
    folder = tmp_path / "inbox"
    folder.mkdir()
    (folder / "one.json").write_text(ann.read_text())
    small = dict(data, annotations=data["annotations"][:3])
    (folder / "two.json").write_text(json.dumps(small))
    assert cli(["batch-snap", str(folder), str(images), str(tmp_path / "o2"), *args]) == 0
    assert len(json.loads((tmp_path / "o2" / "two" / B.OUTPUT_JSON).read_text())["annotations"]) == 3
    assert (tmp_path / "o2" / "one" / B.BOXES_PARQUET).is_file()
    (folder / "broken.json").write_text("{")
    assert cli(["batch-snap", str(folder / "broken.json"), str(images), str(tmp_path / "o3"), *args]) == 2
    assert "broken.json" in capsys.readouterr().err
