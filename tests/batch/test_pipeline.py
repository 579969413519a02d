"""batch_snap end to end: every annotation accounted once with its status, the output
format, agreement with the single-image API, resume after a clean stop and after SIGKILL."""

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
from snapper.config import BatchConfig
from snapper.inference.snap import Snapper
from tests.batchdata import EXPECTED, tiny_checkpoint
from tests.batchdata import fast_config as cfg

REPO = Path(__file__).resolve().parents[2]


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


def test_matches_the_single_image_api_and_batching_does_not_matter(rough, ckpt, tmp_path):
    ann, images, data = rough
    a = pd.read_parquet(B.batch_snap(ann, images, tmp_path / "a", ckpt, cfg(batch_size=3)).boxes)
    b = pd.read_parquet(B.batch_snap(ann, images, tmp_path / "b", ckpt,
                                     cfg(batch_size=64, chunk_images=100, workers=2)).boxes)
    cols = B.PRED_COLS + B.CONF_COLS
    pd.testing.assert_frame_equal(a[["annotation_id", "status", "reason"]], b[["annotation_id", "status", "reason"]])
    np.testing.assert_allclose(a[cols].to_numpy(), b[cols].to_numpy(), atol=1e-3, equal_nan=True)
    s = Snapper.from_checkpoint(ckpt, device="cpu", guard=False)  # as cfg(): the untrained model's raw boxes
    ids = [1001, 1012, 1013]
    res = s.snap(images / "a.jpg", [next(x["bbox"] for x in data["annotations"] if x["id"] == i) for i in ids])
    rows = a.set_index("annotation_id").loc[ids]
    np.testing.assert_allclose(rows[B.PRED_COLS].to_numpy(), res.boxes, atol=1e-3)
    np.testing.assert_allclose(rows[B.CONF_COLS].to_numpy(), res.confidence, atol=1e-4)


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


# run_chunk is patched where batch_snap looks it up (snapper.batch.pipeline).
KILLER = """
import os, signal, sys
from snapper.batch import pipeline as P
from snapper.config import BatchConfig, SnapSettings
ann, images, out, ckpt = sys.argv[1:5]
real, n = P.run_chunk, [0]
def snap_then_die(*a, **k):
    if n[0] == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    n[0] += 1
    return real(*a, **k)
P.run_chunk = snap_then_die
P.batch_snap(ann, images, out, ckpt, BatchConfig(chunk_images=2, workers=0, snap=SnapSettings(batch_size=4, device="cpu")))
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


