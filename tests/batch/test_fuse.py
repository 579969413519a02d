"""Fused boxes: one per (image, object) over the workers' snapped boxes."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from snapper import batch as B
from snapper.crop import tidy_boxes
from snapper.geometry import xywh_to_xyxy
from tests.batchdata import fast_config as cfg


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
