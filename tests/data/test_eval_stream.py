"""The evaluation stream: every usable box exactly once, the same crops whatever the worker
count, skips counted (and, with coco128-train present, the paper's rough-box baseline)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from snapper.config import JitterConfig, ModelConfig
from snapper.data.eval_stream import eval_batches
from snapper.data.manifest import expand_urls
from snapper.data.shards import shard_dataset
from snapper.geometry import paired_iou
from tests.data.shardfactory import CORRUPT_GOOD_IDS, corrupt_samples, rect_samples, write_shards


def _eval_table(urls, workers=0, **kw) -> tuple[dict[int, dict], object]:
    rows = {}
    it = eval_batches(urls, ModelConfig(input_size=32), JitterConfig(), seed=3, batch_size=5, workers=workers, **kw)
    for b in it:
        assert b["image"].dtype == torch.uint8 and b["image"].shape[1:] == (3, 32, 32)
        for k in ("window", "rough", "true"):
            assert b[k].dtype == torch.float64 and b[k].shape[1] == 4
        for j, a in enumerate(b["annotation_id"].tolist()):
            assert a not in rows, f"annotation {a} delivered twice"
            rows[a] = {k: v[j] for k, v in b.items()}
    return rows, it.stats


def test_eval_stream_every_box_once_deterministic(tmp_path):
    samples = rect_samples(10, boxes=3, crowd_every=4)
    # one unusable (zero-width) box: counted, not delivered
    samples[0]["meta"]["annotations"].append({"id": 1, "bbox": [5, 5, 0, 4], "category_id": 1, "iscrowd": 0})
    urls = write_shards(tmp_path, samples, per_shard=3)  # 4 shards
    expected = {a["id"] for s in samples for a in s["meta"]["annotations"] if not a["iscrowd"]} - {1}
    n_crowd = sum(a["iscrowd"] for s in samples for a in s["meta"]["annotations"])
    assert n_crowd > 0
    rows, stats = _eval_table(urls)
    assert set(rows) == expected
    assert stats.excluded_boxes["crowd"] == n_crowd and stats.skipped_boxes["box_degenerate"] == 1
    rows2, _ = _eval_table(urls)
    rows_w, stats_w = _eval_table(urls, workers=2)
    assert set(rows_w) == expected and stats_w.boxes == stats.boxes == len(expected)
    for a in expected:
        for other in (rows2, rows_w):
            for k in ("image", "window", "rough", "true", "target", "image_id", "category_id"):
                assert torch.equal(rows[a][k], other[a][k]), (a, k)
    # rough boxes are jittered versions of the truth, and windows surround the rough boxes
    a = next(iter(expected))
    assert not torch.equal(rows[a]["rough"], rows[a]["true"])
    assert paired_iou(rows[a]["rough"].numpy(), rows[a]["true"].numpy())[0] > 0.5
    capped, _ = _eval_table(urls, max_boxes=7)
    assert len(capped) == 7


def test_corrupt_samples_are_counted_not_delivered(tmp_path):
    urls = write_shards(tmp_path, corrupt_samples(), per_shard=2)
    rows, stats = _eval_table(urls)
    assert {int(r["image_id"]) for r in rows.values()} == CORRUPT_GOOD_IDS
    assert stats.skipped_images == {"corrupt_image": 1, "bad_json": 1}


def test_truncated_shard_is_counted(tmp_path):
    urls = write_shards(tmp_path, rect_samples(4, boxes=1), per_shard=2)
    data = Path(urls[1]).read_bytes()
    Path(urls[1]).write_bytes(data[: len(data) // 3])
    rows, stats = _eval_table(urls)
    assert {int(r["image_id"]) for r in rows.values()} >= {1, 2}
    assert stats.shard_errors + stats.n_skipped_images >= 1


def test_eval_rough_boxes_reproduce_paper_baseline(tmp_path, shared_data):
    data_dir = shared_data / "coco128-train"
    shard_dataset(data_dir / "annotations.json", data_dir / "images", tmp_path / "shards", shard_size=32)
    urls = expand_urls(str(tmp_path / "shards"))  # via shards/train-manifest.json
    n_boxes = sum(1 for a in json.loads((data_dir / "annotations.json").read_text())["annotations"]
                  if not a.get("iscrowd"))
    ious = []
    it = eval_batches(urls, ModelConfig(input_size=32), JitterConfig(), seed=0, batch_size=256)
    for b in it:
        ious.append(paired_iou(b["rough"].numpy(), b["true"].numpy()))
    iou = np.concatenate(ious)
    assert len(iou) + sum(it.stats.skipped_boxes.values()) == n_boxes
    assert 78.0 <= 100 * iou.mean() <= 85.0
